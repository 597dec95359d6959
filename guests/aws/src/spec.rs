//! `MachineClass.providerSpec` of the AWS provider (the JSON of machine-controller-manager-
//! provider-aws) and its validation rules, plus the credentials in the secret. Pure: no cloud
//! calls, so `validate-machine-class` and every operation reject a bad class before talking to
//! EC2.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::regions;

pub const CLUSTER_TAG_PREFIX: &str = "kubernetes.io/cluster/";
pub const ROLE_TAG_PREFIX: &str = "kubernetes.io/role/";
/// `deviceName` that marks the root disk when there is more than one block device.
pub const ROOT_DEVICE_NAME: &str = "/root";
pub const VALID_VOLUME_TYPES: &[&str] = &["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];

/// The providerSpec (field names and meaning as in provider-aws `AWSProviderSpec`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub ami: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub machine_type: String,
    #[serde(default)]
    pub iam: Iam,
    #[serde(default)]
    pub key_name: Option<String>,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    pub block_devices: Vec<BlockDevice>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub spot_price: Option<String>,
    #[serde(default)]
    pub capacity_reservation: Option<CapacityReservation>,
    #[serde(default)]
    pub instance_metadata_options: Option<InstanceMetadataOptions>,
    #[serde(default)]
    pub src_and_dst_checks_enabled: Option<bool>,
    #[serde(default)]
    pub placement: Option<Placement>,
    #[serde(default)]
    pub ebs_optimized: bool,
    #[serde(default)]
    pub monitoring: bool,
    #[serde(default)]
    pub cpu_options: Option<CpuOptions>,
    #[serde(default)]
    pub instance_market_options: Option<InstanceMarketOptions>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Iam {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub arn: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    #[serde(default, rename = "subnetID")]
    pub subnet_id: String,
    #[serde(default, rename = "securityGroupIDs")]
    pub security_group_ids: Vec<String>,
    #[serde(default, rename = "associatePublicIPAddress")]
    pub associate_public_ip_address: Option<bool>,
    #[serde(default)]
    pub delete_on_termination: Option<bool>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub interface_type: Option<String>,
    #[serde(default)]
    pub device_index: Option<i32>,
    #[serde(default)]
    pub network_card_index: Option<i32>,
    #[serde(default)]
    pub ipv6_address_count: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockDevice {
    #[serde(default)]
    pub device_name: String,
    #[serde(default)]
    pub ebs: Ebs,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ebs {
    #[serde(default)]
    pub delete_on_termination: Option<bool>,
    #[serde(default)]
    pub encrypted: bool,
    #[serde(default)]
    pub iops: i32,
    #[serde(default)]
    pub throughput: Option<i32>,
    #[serde(default, rename = "kmsKeyID")]
    pub kms_key_id: Option<String>,
    #[serde(default, rename = "snapshotID")]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub volume_size: i32,
    #[serde(default)]
    pub volume_type: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityReservation {
    #[serde(default)]
    pub capacity_reservation_preference: String,
    #[serde(default, rename = "capacityReservationId")]
    pub capacity_reservation_id: Option<String>,
    #[serde(default)]
    pub capacity_reservation_resource_group_arn: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct InstanceMetadataOptions {
    #[serde(default, rename = "httpEndpoint")]
    pub http_endpoint: String,
    #[serde(default, rename = "httpPutResponseHopLimit")]
    pub http_put_response_hop_limit: Option<i32>,
    #[serde(default, rename = "httpTokens")]
    pub http_tokens: String,
    #[serde(default, rename = "httpProtocolIpv6")]
    pub http_protocol_ipv6: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    #[serde(default)]
    pub group_id: Option<String>,
    #[serde(default)]
    pub tenancy: Option<String>,
    #[serde(default)]
    pub host_id: Option<String>,
    #[serde(default)]
    pub partition_number: Option<i32>,
    #[serde(default)]
    pub affinity: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuOptions {
    #[serde(default)]
    pub core_count: Option<i32>,
    #[serde(default)]
    pub threads_per_core: Option<i32>,
    #[serde(default)]
    pub amd_sev_snp: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceMarketOptions {
    #[serde(default)]
    pub market_type: String,
}

/// One validation failure: the field it concerns (`providerSpec.x.y`, `secret.key`) and what
/// is wrong with it. Shown as `path: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A list of validation failures, shown joined by `; `.
#[derive(Debug, Default, PartialEq)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Whether a failure of the field at `path` is already reported.
    pub fn has(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path == path)
    }
}

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Decode the providerSpec JSON; a malformed field is named by its JSON path.
pub fn decode(json: &str) -> Result<ProviderSpec, Errors> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "providerSpec".to_string()
        } else {
            format!("providerSpec.{path}")
        };
        let mut errors = Errors::default();
        errors.add(field, format!("malformed: {}", e.inner()));
        errors
    })
}

/// Decode and validate (provider-aws `ValidateAWSProviderSpec` rules, plus a known region).
pub fn parse(json: &str) -> Result<ProviderSpec, Errors> {
    let spec = decode(json)?;
    let errors = validate(&spec);
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(errors)
    }
}

pub fn validate(spec: &ProviderSpec) -> Errors {
    let mut e = Errors::default();
    let f = |name: &str| format!("providerSpec.{name}");
    if spec.ami.is_empty() {
        e.add(
            f("ami"),
            "required (the AMI ID, e.g. ami-0123456789abcdef0)",
        );
    }
    if spec.region.is_empty() {
        e.add(f("region"), "required");
    } else if !regions::is_known(&spec.region) {
        e.add(f("region"), format!("unknown AWS region {:?}", spec.region));
    }
    if spec.machine_type.is_empty() {
        e.add(
            f("machineType"),
            "required (the EC2 instance type, e.g. m5.large)",
        );
    }
    if spec.iam.name.is_empty() == spec.iam.arn.is_empty() {
        e.add(f("iam"), "exactly one of iam.name or iam.arn must be set");
    }
    validate_block_devices(&spec.block_devices, &mut e);
    if let Some(cr) = &spec.capacity_reservation {
        let id = cr.capacity_reservation_id.is_some();
        let arn = cr.capacity_reservation_resource_group_arn.is_some();
        if !cr.capacity_reservation_preference.is_empty() && (id || arn) {
            e.add(f("capacityReservation"), "capacityReservationPreference cannot be set together with capacityReservationId or capacityReservationResourceGroupArn");
        } else if id && arn {
            e.add(f("capacityReservation"), "only one of capacityReservationId and capacityReservationResourceGroupArn may be set");
        }
    }
    validate_network_interfaces(&spec.network_interfaces, &mut e);
    if let Some(p) = &spec.placement {
        if let Some(t) = &p.tenancy
            && !["default", "dedicated", "host"].contains(&t.as_str())
        {
            e.add(
                f("placement.tenancy"),
                format!("unsupported value {t:?}: expected default, dedicated or host"),
            );
        }
        if let Some(a) = &p.affinity
            && !["default", "host"].contains(&a.as_str())
        {
            e.add(
                f("placement.affinity"),
                format!("unsupported value {a:?}: expected default or host"),
            );
        }
        if p.host_id.is_some() && p.tenancy.as_deref() != Some("host") {
            e.add(
                f("placement.hostId"),
                "may only be set when tenancy is \"host\"",
            );
        }
        if p.partition_number.is_some_and(|n| n < 1) {
            e.add(f("placement.partitionNumber"), "must be >= 1");
        }
    }
    if let Some(m) = &spec.instance_market_options
        && ![
            "spot",
            "capacity-block",
            "interruptible-capacity-reservation",
        ]
        .contains(&m.market_type.as_str())
    {
        e.add(
            f("instanceMarketOptions.marketType"),
            format!(
                "unsupported value {:?}: expected spot or capacity-block",
                m.market_type
            ),
        );
    }
    if let Some(price) = &spec.spot_price
        && !price.is_empty()
        && price.parse::<f64>().map_or(true, |p| p <= 0.0)
    {
        e.add(f("spotPrice"), format!("{price:?} is not a positive price"));
    }
    validate_tags(&spec.tags, &mut e);
    if let Some(m) = &spec.instance_metadata_options {
        if m.http_put_response_hop_limit
            .is_some_and(|n| !(0..=64).contains(&n))
        {
            e.add(
                f("instanceMetadataOptions.httpPutResponseHopLimit"),
                "must be between 0 and 64",
            );
        }
        for (name, value, accepted) in [
            ("httpEndpoint", &m.http_endpoint, ["disabled", "enabled"]),
            ("httpTokens", &m.http_tokens, ["required", "optional"]),
            (
                "httpProtocolIpv6",
                &m.http_protocol_ipv6,
                ["disabled", "enabled"],
            ),
        ] {
            if !value.is_empty() && !accepted.contains(&value.as_str()) {
                e.add(
                    f(&format!("instanceMetadataOptions.{name}")),
                    format!("{value:?} is not one of {accepted:?}"),
                );
            }
        }
    }
    if let Some(c) = &spec.cpu_options {
        match (c.core_count, c.threads_per_core) {
            (Some(_), None) => e.add(
                f("cpuOptions.threadsPerCore"),
                "required when coreCount is set",
            ),
            (None, Some(_)) => e.add(
                f("cpuOptions.coreCount"),
                "required when threadsPerCore is set",
            ),
            (Some(_), Some(t)) if t != 1 && t != 2 => {
                e.add(f("cpuOptions.threadsPerCore"), "must be 1 or 2")
            }
            _ => {}
        }
        if let Some(s) = &c.amd_sev_snp
            && !["enabled", "disabled"].contains(&s.as_str())
        {
            e.add(f("cpuOptions.amdSevSnp"), "must be enabled or disabled");
        }
    }
    e
}

fn validate_block_devices(devices: &[BlockDevice], e: &mut Errors) {
    if devices.is_empty() {
        e.add(
            "providerSpec.blockDevices",
            "required: at least one block device (the root disk)",
        );
        return;
    }
    let mut roots = 0;
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, d) in devices.iter().enumerate() {
        let at = |name: &str| format!("providerSpec.blockDevices[{i}].{name}");
        if d.device_name == ROOT_DEVICE_NAME {
            roots += 1;
        } else if devices.len() > 1 && !is_data_device_name(&d.device_name) {
            e.add(at("deviceName"), format!("{:?} does not match ^/dev/(sd[a-z]|xvd[a-c][a-z]?)$ (or \"/root\" for the root disk)", d.device_name));
        }
        *names.entry(d.device_name.as_str()).or_default() += 1;
        if !VALID_VOLUME_TYPES.contains(&d.ebs.volume_type.as_str()) {
            e.add(
                at("ebs.volumeType"),
                format!(
                    "{:?} is not a valid EBS volume type {VALID_VOLUME_TYPES:?}",
                    d.ebs.volume_type
                ),
            );
        }
        if d.ebs.volume_size <= 0 {
            e.add(at("ebs.volumeSize"), "required: a positive size in GiB");
        }
        if d.ebs.iops < 0
            || (matches!(d.ebs.volume_type.as_str(), "io1" | "io2") && d.ebs.iops == 0)
        {
            e.add(
                at("ebs.iops"),
                "required: a positive IOPS value for io1/io2 volumes, never negative",
            );
        }
        if d.ebs.throughput.is_some_and(|t| t <= 0) {
            e.add(at("ebs.throughput"), "must be positive");
        }
    }
    if roots > 1 || (roots == 0 && devices.len() > 1) {
        e.add("providerSpec.blockDevices", "exactly one device must be the root disk (deviceName \"/root\") when there are several");
    }
    for (name, n) in names {
        if n > 1 {
            e.add(
                "providerSpec.blockDevices",
                format!("device name {name:?} is used {n} times; device names must be unique"),
            );
        }
    }
}

/// `^/dev/(sd[a-z]|xvd[a-c][a-z]?)$`
fn is_data_device_name(name: &str) -> bool {
    let lower = |c: u8| c.is_ascii_lowercase();
    match name.strip_prefix("/dev/") {
        Some(rest) => {
            let b = rest.as_bytes();
            if let Some(r) = rest.strip_prefix("sd") {
                r.len() == 1 && lower(r.as_bytes()[0])
            } else if rest.starts_with("xvd") {
                (b.len() == 4 || b.len() == 5)
                    && (b'a'..=b'c').contains(&b[3])
                    && (b.len() == 4 || lower(b[4]))
            } else {
                false
            }
        }
        None => false,
    }
}

fn validate_network_interfaces(nics: &[NetworkInterface], e: &mut Errors) {
    if nics.is_empty() {
        e.add(
            "providerSpec.networkInterfaces",
            "required: at least one network interface",
        );
    }
    for (i, n) in nics.iter().enumerate() {
        let at = |name: &str| format!("providerSpec.networkInterfaces[{i}].{name}");
        if n.subnet_id.is_empty() {
            e.add(at("subnetID"), "required");
        }
        if n.security_group_ids.is_empty() {
            e.add(
                at("securityGroupIDs"),
                "required: at least one security group ID",
            );
        }
        for (j, g) in n.security_group_ids.iter().enumerate() {
            if g.is_empty() {
                e.add(at(&format!("securityGroupIDs[{j}]")), "must not be blank");
            }
        }
        if let Some(t) = &n.interface_type
            && !["", "interface", "efa", "efa-only"].contains(&t.as_str())
        {
            e.add(
                at("interfaceType"),
                format!("unsupported value {t:?}: expected interface, efa or efa-only"),
            );
        }
        if n.device_index.is_some_and(|x| x < 0) {
            e.add(at("deviceIndex"), "must be >= 0");
        }
        if n.network_card_index.is_some_and(|x| x < 0) {
            e.add(at("networkCardIndex"), "must be >= 0");
        }
    }
}

fn validate_tags(tags: &BTreeMap<String, String>, e: &mut Errors) {
    if !tags
        .keys()
        .any(|k| k.starts_with(CLUSTER_TAG_PREFIX) && k.len() > CLUSTER_TAG_PREFIX.len())
    {
        e.add(
            "providerSpec.tags",
            format!("a tag of the form {CLUSTER_TAG_PREFIX}<cluster> is required"),
        );
    }
    if !tags
        .keys()
        .any(|k| k.starts_with(ROLE_TAG_PREFIX) && k.len() > ROLE_TAG_PREFIX.len())
    {
        e.add(
            "providerSpec.tags",
            format!("a tag of the form {ROLE_TAG_PREFIX}<role> is required"),
        );
    }
}

impl ProviderSpec {
    /// The `kubernetes.io/cluster/…` tag key.
    pub fn cluster_tag(&self) -> &str {
        self.tags
            .keys()
            .find(|k| k.starts_with(CLUSTER_TAG_PREFIX))
            .map_or("", String::as_str)
    }
    /// The `kubernetes.io/role/…` tag key.
    pub fn role_tag(&self) -> &str {
        self.tags
            .keys()
            .find(|k| k.starts_with(ROLE_TAG_PREFIX))
            .map_or("", String::as_str)
    }
}

/// AWS credentials from the merged secret.
#[derive(Clone, Debug, PartialEq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// How the provider's EC2 requests get signed.
#[derive(Clone, Debug, PartialEq)]
pub enum Signing {
    /// With the credentials in the secret.
    Own(Credentials),
    /// By the host, which withheld the credentials from the secret (contract 0.1.1
    /// `credentials`): the provider never holds them.
    Brokered,
}

/// The credentials from the secret, or [`Signing::Brokered`] when the host brokers them.
pub fn signing(secret: &[(String, Vec<u8>)], brokered: bool) -> Result<Signing, Errors> {
    if brokered {
        return Ok(Signing::Brokered);
    }
    credentials(secret).map(Signing::Own)
}

pub const ACCESS_KEY_KEYS: [&str; 2] = ["providerAccessKeyId", "accessKeyID"];
pub const SECRET_KEY_KEYS: [&str; 2] = ["providerSecretAccessKey", "secretAccessKey"];
pub const SESSION_TOKEN_KEY: &str = "providerSessionToken";
pub const USER_DATA_KEY: &str = "userData";

fn get<'a>(secret: &'a [(String, Vec<u8>)], key: &str) -> Option<&'a [u8]> {
    secret
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
        .filter(|v| !v.is_empty())
}

/// The path that names a secret key in errors.
fn secret_path(key: &str) -> String {
    format!("secret.{key}")
}

/// A key's value as text, surrounding whitespace trimmed as provider-aws does (a trailing
/// newline from `echo | base64` is the usual one); empty after trimming counts as missing.
fn text(secret: &[(String, Vec<u8>)], keys: &[&str], errors: &mut Errors) -> Option<String> {
    let (key, bytes) = keys.iter().find_map(|k| get(secret, k).map(|v| (*k, v)))?;
    match std::str::from_utf8(bytes) {
        Ok(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Err(_) => {
            errors.add(secret_path(key), "is not UTF-8 text");
            None
        }
    }
}

/// What looks wrong with the credentials without being a refusal (provider-aws accepts any
/// value, and LocalStack or moto set-ups write `test`): access key IDs are 16-128 upper-case
/// letters and digits (AKIA…/ASIA…), secret keys are longer than 16, neither contains
/// whitespace inside. Logged as warnings; AWS itself answers a wrong key.
pub fn credential_warnings(secret: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (key, value) in secret {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        let value = value.trim();
        let is_access = ACCESS_KEY_KEYS.contains(&key.as_str());
        let is_secret = SECRET_KEY_KEYS.contains(&key.as_str());
        if !(is_access || is_secret) || value.is_empty() {
            continue;
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            warnings.push(format!(
                "secret.{key} contains whitespace or control characters"
            ));
        }
        if is_access
            && !((16..=128).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
        {
            warnings.push(format!(
                "secret.{key} does not look like an AWS access key ID (16-128 upper-case letters and digits, like AKIA…)"
            ));
        }
        if is_secret && value.len() < 16 {
            warnings.push(format!(
                "secret.{key} is shorter than an AWS secret access key"
            ));
        }
    }
    warnings
}

/// Credentials from the secret (provider-aws keys or their alternatives); missing or
/// malformed keys are named.
pub fn credentials(secret: &[(String, Vec<u8>)]) -> Result<Credentials, Errors> {
    let mut e = Errors::default();
    let access = text(secret, &ACCESS_KEY_KEYS, &mut e);
    let secret_key = text(secret, &SECRET_KEY_KEYS, &mut e);
    let token = text(secret, &[SESSION_TOKEN_KEY], &mut e);
    if access.is_none() && !ACCESS_KEY_KEYS.iter().any(|k| e.has(&secret_path(k))) {
        e.add(
            "secret",
            format!(
                "missing key {:?} (or {:?})",
                ACCESS_KEY_KEYS[0], ACCESS_KEY_KEYS[1]
            ),
        );
    }
    if secret_key.is_none() && !SECRET_KEY_KEYS.iter().any(|k| e.has(&secret_path(k))) {
        e.add(
            "secret",
            format!(
                "missing key {:?} (or {:?})",
                SECRET_KEY_KEYS[0], SECRET_KEY_KEYS[1]
            ),
        );
    }
    match (access, secret_key) {
        (Some(access_key_id), Some(secret_access_key)) if e.is_empty() => Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: token,
        }),
        _ => Err(e),
    }
}

/// The secret's `userData` (required, as in provider-aws).
pub fn user_data(secret: &[(String, Vec<u8>)]) -> Result<Vec<u8>, Errors> {
    get(secret, USER_DATA_KEY)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            let mut e = Errors::default();
            e.add("secret", format!("missing key {USER_DATA_KEY:?}"));
            e
        })
}

/// Everything validate-machine-class checks: the spec, the credentials and the user data.
pub fn validate_class(
    spec_json: &str,
    secret: &[(String, Vec<u8>)],
    brokered: bool,
) -> Result<(ProviderSpec, Signing), Errors> {
    let mut all = Errors::default();
    let spec = match parse(spec_json) {
        Ok(s) => Some(s),
        Err(e) => {
            all.0.extend(e.0);
            None
        }
    };
    let creds = match signing(secret, brokered) {
        Ok(c) => Some(c),
        Err(e) => {
            all.0.extend(e.0);
            None
        }
    };
    if let Err(e) = user_data(secret) {
        all.0.extend(e.0);
    }
    match (spec, creds) {
        (Some(s), Some(c)) if all.is_empty() => Ok((s, c)),
        _ => Err(all),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn good_spec() -> serde_json::Value {
        serde_json::json!({
            "ami": "ami-0123456789abcdef0",
            "region": "eu-west-1",
            "machineType": "m5.large",
            "iam": {"name": "nodes"},
            "keyName": "ssh",
            "networkInterfaces": [{"subnetID": "subnet-1", "securityGroupIDs": ["sg-1"]}],
            "blockDevices": [{"ebs": {"volumeSize": 50, "volumeType": "gp3"}}],
            "tags": {"kubernetes.io/cluster/shoot--a": "1", "kubernetes.io/role/node": "1"},
        })
    }

    pub fn secret() -> Vec<(String, Vec<u8>)> {
        vec![
            (
                "providerAccessKeyId".into(),
                b"AKIAIOSFODNN7EXAMPLE".to_vec(),
            ),
            (
                "providerSecretAccessKey".into(),
                b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_vec(),
            ),
            ("userData".into(), b"#!/bin/sh\necho hi".to_vec()),
        ]
    }

    fn errors_of(mut patch: impl FnMut(&mut serde_json::Value)) -> String {
        let mut v = good_spec();
        patch(&mut v);
        parse(&v.to_string())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn good_spec_passes() {
        let spec = parse(&good_spec().to_string()).unwrap();
        assert_eq!(spec.cluster_tag(), "kubernetes.io/cluster/shoot--a");
        assert_eq!(spec.role_tag(), "kubernetes.io/role/node");
        validate_class(&good_spec().to_string(), &secret(), false).unwrap();
    }

    #[test]
    fn missing_fields_are_named() {
        for field in ["ami", "region", "machineType"] {
            let msg = errors_of(|v| {
                v.as_object_mut().unwrap().remove(field);
            });
            assert!(
                msg.contains(&format!("providerSpec.{field}: required")),
                "{field}: {msg}"
            );
        }
        let msg = errors_of(|v| v["iam"] = serde_json::json!({}));
        assert!(msg.contains("providerSpec.iam:"), "{msg}");
        let msg = errors_of(|v| v["iam"] = serde_json::json!({"name": "a", "arn": "b"}));
        assert!(msg.contains("providerSpec.iam:"), "{msg}");
        let msg = errors_of(|v| v["networkInterfaces"] = serde_json::json!([]));
        assert!(msg.contains("providerSpec.networkInterfaces:"), "{msg}");
        let msg = errors_of(|v| v["networkInterfaces"][0]["subnetID"] = "".into());
        assert!(
            msg.contains("providerSpec.networkInterfaces[0].subnetID: required"),
            "{msg}"
        );
        let msg = errors_of(|v| v["blockDevices"] = serde_json::json!([]));
        assert!(msg.contains("providerSpec.blockDevices:"), "{msg}");
    }

    #[test]
    fn malformed_fields_are_named_by_path() {
        let msg = errors_of(|v| v["blockDevices"][0]["ebs"]["volumeSize"] = "big".into());
        assert!(
            msg.starts_with("providerSpec.blockDevices[0].ebs.volumeSize: malformed"),
            "{msg}"
        );
        let msg = errors_of(|v| v["machineType"] = 5.into());
        assert!(
            msg.starts_with("providerSpec.machineType: malformed"),
            "{msg}"
        );
        let msg = parse("not json").unwrap_err().to_string();
        assert!(msg.starts_with("providerSpec: malformed"), "{msg}");
    }

    #[test]
    fn block_device_rules() {
        let msg = errors_of(|v| v["blockDevices"][0]["ebs"]["volumeType"] = "fast".into());
        assert!(msg.contains("blockDevices[0].ebs.volumeType"), "{msg}");
        let msg = errors_of(|v| v["blockDevices"][0]["ebs"]["volumeSize"] = 0.into());
        assert!(msg.contains("blockDevices[0].ebs.volumeSize"), "{msg}");
        let msg = errors_of(|v| {
            v["blockDevices"][0]["ebs"] = serde_json::json!({"volumeSize": 10, "volumeType": "io1"})
        });
        assert!(msg.contains("blockDevices[0].ebs.iops"), "{msg}");
        // Two devices: one must be /root, the other a data device name.
        let msg = errors_of(|v| {
            v["blockDevices"] = serde_json::json!([
                {"deviceName": "/root", "ebs": {"volumeSize": 50, "volumeType": "gp3"}},
                {"deviceName": "/dev/sdb", "ebs": {"volumeSize": 100, "volumeType": "gp2"}},
            ])
        });
        assert_eq!(msg, "");
        let msg = errors_of(|v| {
            v["blockDevices"] = serde_json::json!([
                {"deviceName": "/dev/sda", "ebs": {"volumeSize": 50, "volumeType": "gp3"}},
                {"deviceName": "/dev/nvme1", "ebs": {"volumeSize": 100, "volumeType": "gp2"}},
            ])
        });
        assert!(
            msg.contains("blockDevices[1].deviceName") && msg.contains("root disk"),
            "{msg}"
        );
        assert!(
            is_data_device_name("/dev/xvdba")
                && is_data_device_name("/dev/xvda")
                && !is_data_device_name("/dev/xvdd")
        );
    }

    #[test]
    fn tags_need_cluster_and_role() {
        let msg = errors_of(|v| v["tags"] = serde_json::json!({"kubernetes.io/role/node": "1"}));
        assert!(
            msg.contains("providerSpec.tags: a tag of the form kubernetes.io/cluster/"),
            "{msg}"
        );
        let msg = errors_of(|v| v["tags"] = serde_json::json!({"kubernetes.io/cluster/x": "1"}));
        assert!(msg.contains("kubernetes.io/role/"), "{msg}");
    }

    #[test]
    fn unknown_region_is_rejected() {
        let msg = errors_of(|v| v["region"] = "mars-north-1".into());
        assert!(
            msg.contains("providerSpec.region: unknown AWS region \"mars-north-1\""),
            "{msg}"
        );
    }

    #[test]
    fn other_rules() {
        assert!(
            errors_of(|v| v["placement"] = serde_json::json!({"tenancy": "shared"}))
                .contains("placement.tenancy")
        );
        assert!(
            errors_of(|v| v["placement"] = serde_json::json!({"hostId": "h-1"}))
                .contains("placement.hostId")
        );
        assert!(errors_of(|v| v["instanceMetadataOptions"] = serde_json::json!({"httpTokens": "maybe"})).contains("httpTokens"));
        assert!(
            errors_of(|v| v["instanceMetadataOptions"] =
                serde_json::json!({"httpPutResponseHopLimit": 65}))
            .contains("HopLimit")
        );
        assert!(errors_of(|v| v["capacityReservation"] = serde_json::json!({"capacityReservationPreference": "open", "capacityReservationId": "cr-1"})).contains("capacityReservation"));
        assert!(errors_of(|v| v["spotPrice"] = "cheap".into()).contains("providerSpec.spotPrice"));
        assert_eq!(errors_of(|v| v["spotPrice"] = "".into()), "");
    }

    #[test]
    fn credentials_keys_and_shape() {
        let c = credentials(&secret()).unwrap();
        assert_eq!(c.access_key_id, "AKIAIOSFODNN7EXAMPLE");
        let alt = vec![
            ("accessKeyID".to_string(), b"AKIAIOSFODNN7EXAMPLE".to_vec()),
            (
                "secretAccessKey".to_string(),
                b"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_vec(),
            ),
            ("providerSessionToken".to_string(), b"tok".to_vec()),
        ];
        assert_eq!(
            credentials(&alt).unwrap().session_token.as_deref(),
            Some("tok")
        );

        let missing: Vec<_> = secret()
            .into_iter()
            .filter(|(k, _)| k != "providerSecretAccessKey")
            .collect();
        let msg = credentials(&missing).unwrap_err().to_string();
        assert!(
            msg.contains("missing key \"providerSecretAccessKey\""),
            "{msg}"
        );

        // Surrounding whitespace is trimmed, as provider-aws does.
        let mut newline = secret();
        newline[0].1 = b"AKIAIOSFODNN7EXAMPLE\n".to_vec();
        assert_eq!(
            credentials(&newline).unwrap().access_key_id,
            "AKIAIOSFODNN7EXAMPLE"
        );
        assert!(credential_warnings(&newline).is_empty());

        // A key that does not look like AWS's (moto's and LocalStack's `test`) is accepted,
        // with a warning; only a missing (or blank) key is refused.
        let mut moto = secret();
        moto[0].1 = b"test\n".to_vec();
        moto[1].1 = b"test".to_vec();
        assert_eq!(credentials(&moto).unwrap().access_key_id, "test");
        let warnings = credential_warnings(&moto);
        assert!(
            warnings[0]
                .contains("secret.providerAccessKeyId does not look like an AWS access key ID"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("shorter than an AWS secret access key"),
            "{warnings:?}"
        );
        let mut blank = secret();
        blank[0].1 = b" \n".to_vec();
        let msg = credentials(&blank).unwrap_err().to_string();
        assert!(msg.contains("missing key \"providerAccessKeyId\""), "{msg}");

        // A key that is there but not UTF-8 is reported once, under its own path, not also as
        // missing; a missing key is reported under `secret`.
        for key in ACCESS_KEY_KEYS {
            let bad = vec![(key.to_string(), vec![0xff, 0xfe]), secret()[1].clone()];
            let e = credentials(&bad).unwrap_err();
            let path = format!("secret.{key}");
            assert!(e.has(&path) && !e.has("secret"), "{e:?}");
            assert_eq!(e.0.iter().filter(|f| f.path == path).count(), 1, "{e:?}");
            assert_eq!(e.to_string(), format!("{path}: is not UTF-8 text"));
        }
        let e = credentials(&missing).unwrap_err();
        assert_eq!(
            e.0,
            [FieldError {
                path: "secret".into(),
                message: "missing key \"providerSecretAccessKey\" (or \"secretAccessKey\")".into(),
            }]
        );

        let no_user_data: Vec<_> = secret()
            .into_iter()
            .filter(|(k, _)| k != "userData")
            .collect();
        let msg = validate_class(&good_spec().to_string(), &no_user_data, false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("missing key \"userData\""), "{msg}");
    }
}

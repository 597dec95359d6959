//! EC2 Query API requests (`Action=…&Version=2016-11-15&…`, form-encoded POST bodies).

use base64::Engine as _;

use crate::spec::ProviderSpec;

pub const API_VERSION: &str = "2016-11-15";

/// States of an instance that still counts as the machine's VM (as provider-aws).
pub const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// One EC2 action with its parameters, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    pub name: &'static str,
    pub params: Vec<(String, String)>,
    /// Seconds the host may keep a successful answer for every call of this provider with
    /// the same credential (0: not kept); for reads that do not change during a scale-up.
    pub cache_secs: u32,
}

impl Action {
    pub fn new(name: &'static str) -> Self {
        Action {
            name,
            params: Vec::new(),
            cache_secs: 0,
        }
    }
    fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.params.push((key.into(), value.into()));
        self
    }
    fn opt<V: ToString>(&mut self, key: impl Into<String>, value: Option<V>) -> &mut Self {
        if let Some(v) = value {
            self.set(key, v.to_string());
        }
        self
    }
    fn filter(&mut self, n: usize, name: &str, values: &[&str]) -> &mut Self {
        self.set(format!("Filter.{n}.Name"), name);
        for (i, v) in values.iter().enumerate() {
            self.set(format!("Filter.{n}.Value.{}", i + 1), *v);
        }
        self
    }
    /// The value of a parameter (for tests and request counting).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The form body: `Action=…&Version=…&k=v…`, RFC 3986 percent-encoded.
    pub fn body(&self) -> String {
        let mut out = format!("Action={}&Version={API_VERSION}", self.name);
        for (k, v) in &self.params {
            out.push('&');
            encode_into(k, &mut out);
            out.push('=');
            encode_into(v, &mut out);
        }
        out
    }
}

/// Percent-encode everything but the RFC 3986 unreserved characters (as SigV4 expects).
pub fn encode_into(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Most values of one filter EC2 takes in one request.
pub const MAX_FILTER_VALUES: usize = 200;

/// The VMs of several machines at once (batch status): `Name` tags among `names` (at most
/// [`MAX_FILTER_VALUES`]), the class's cluster and role tags, and a live state.
pub fn describe_machines(
    names: &[&str],
    cluster_tag: &str,
    role_tag: &str,
    next_token: Option<&str>,
) -> Action {
    let mut a = Action::new("DescribeInstances");
    a.filter(1, "tag:Name", names)
        .filter(2, "tag-key", &[cluster_tag])
        .filter(3, "tag-key", &[role_tag]);
    a.filter(4, "instance-state-name", &LIVE_STATES);
    a.opt("NextToken", next_token);
    a
}

/// Live instances by ID (at most [`MAX_FILTER_VALUES`]): the `instance-id` filter, not
/// `InstanceId.N`, so that an ID EC2 no longer knows is left out instead of failing the
/// request. The ID filter comes first: a server that applies filters in order (moto) then
/// reads the tags of these instances only.
pub fn describe_instances_by_id(ids: &[&str], next_token: Option<&str>) -> Action {
    let mut a = Action::new("DescribeInstances");
    a.filter(1, "instance-id", ids)
        .filter(2, "instance-state-name", &LIVE_STATES);
    a.opt("NextToken", next_token);
    a
}

/// Terminate several instances in one request.
pub fn terminate_instances(ids: &[&str]) -> Action {
    let mut a = Action::new("TerminateInstances");
    for (i, id) in ids.iter().enumerate() {
        a.set(format!("InstanceId.{}", i + 1), *id);
    }
    a
}

/// Every live VM carrying the class's cluster and role tags (list-machines), one page.
pub fn describe_class(
    cluster_tag: &str,
    role_tag: &str,
    page_size: Option<u32>,
    next_token: Option<&str>,
) -> Action {
    let mut a = Action::new("DescribeInstances");
    a.filter(1, "tag-key", &[cluster_tag])
        .filter(2, "tag-key", &[role_tag]);
    a.filter(3, "instance-state-name", &LIVE_STATES);
    a.opt("MaxResults", page_size);
    a.opt("NextToken", next_token);
    a
}

pub fn describe_instance(id: &str) -> Action {
    let mut a = Action::new("DescribeInstances");
    a.set("InstanceId.1", id);
    a
}

/// The class's AMI (its root device): the same answer for every machine of a scale-up, so
/// the host keeps it a minute.
pub fn describe_image(ami: &str) -> Action {
    let mut a = Action::new("DescribeImages");
    a.set("ImageId.1", ami);
    a.cache_secs = 60;
    a
}

pub fn terminate_instance(id: &str) -> Action {
    terminate_instances(&[id])
}

pub fn disable_source_dest_check(id: &str) -> Action {
    let mut a = Action::new("ModifyInstanceAttribute");
    a.set("InstanceId", id)
        .set("SourceDestCheck.Value", "false");
    a
}

/// The idempotency token of a machine's RunInstances: stable for the same Machine object
/// (namespace, name, uid), at most 64 ASCII characters as EC2 requires.
pub fn client_token(namespace: &str, name: &str, uid: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{namespace}/{name}/{uid}").as_bytes());
    let hex: String = digest.iter().take(24).map(|b| format!("{b:02x}")).collect();
    format!("mcm-{hex}")
}

/// RunInstances for one machine (provider-aws `CreateMachine` parameters).
pub fn run_instances(
    spec: &ProviderSpec,
    machine_name: &str,
    user_data: &[u8],
    root_device_name: &str,
    client_token: &str,
) -> Action {
    let mut a = Action::new("RunInstances");
    a.set("ImageId", &spec.ami)
        .set("InstanceType", &spec.machine_type)
        .set("MinCount", "1")
        .set("MaxCount", "1");
    a.set("ClientToken", client_token);
    a.set(
        "UserData",
        base64::engine::general_purpose::STANDARD.encode(user_data),
    );
    if !spec.iam.name.is_empty() {
        a.set("IamInstanceProfile.Name", &spec.iam.name);
    } else if !spec.iam.arn.is_empty() {
        a.set("IamInstanceProfile.Arn", &spec.iam.arn);
    }
    if let Some(k) = spec.key_name.as_deref().filter(|k| !k.is_empty()) {
        a.set("KeyName", k);
    }
    for (i, d) in spec.block_devices.iter().enumerate() {
        let p = format!("BlockDeviceMapping.{}", i + 1);
        let name =
            if d.device_name == crate::spec::ROOT_DEVICE_NAME || spec.block_devices.len() == 1 {
                root_device_name
            } else {
                d.device_name.as_str()
            };
        a.set(format!("{p}.DeviceName"), name);
        a.set(format!("{p}.Ebs.VolumeSize"), d.ebs.volume_size.to_string());
        a.set(format!("{p}.Ebs.VolumeType"), &d.ebs.volume_type);
        a.set(format!("{p}.Ebs.Encrypted"), d.ebs.encrypted.to_string());
        a.set(
            format!("{p}.Ebs.DeleteOnTermination"),
            d.ebs.delete_on_termination.unwrap_or(true).to_string(),
        );
        a.opt(format!("{p}.Ebs.Iops"), Some(d.ebs.iops).filter(|i| *i > 0));
        a.opt(format!("{p}.Ebs.Throughput"), d.ebs.throughput);
        a.opt(format!("{p}.Ebs.KmsKeyId"), d.ebs.kms_key_id.as_deref());
        a.opt(format!("{p}.Ebs.SnapshotId"), d.ebs.snapshot_id.as_deref());
    }
    for (i, n) in spec.network_interfaces.iter().enumerate() {
        let p = format!("NetworkInterface.{}", i + 1);
        a.set(
            format!("{p}.DeviceIndex"),
            n.device_index.unwrap_or(i as i32).to_string(),
        );
        a.set(format!("{p}.SubnetId"), &n.subnet_id);
        for (j, g) in n.security_group_ids.iter().enumerate() {
            a.set(format!("{p}.SecurityGroupId.{}", j + 1), g);
        }
        a.opt(
            format!("{p}.AssociatePublicIpAddress"),
            n.associate_public_ip_address,
        );
        a.set(
            format!("{p}.DeleteOnTermination"),
            n.delete_on_termination.unwrap_or(true).to_string(),
        );
        a.opt(format!("{p}.Description"), n.description.as_deref());
        a.opt(
            format!("{p}.InterfaceType"),
            n.interface_type.as_deref().filter(|t| !t.is_empty()),
        );
        a.opt(format!("{p}.NetworkCardIndex"), n.network_card_index);
        a.opt(format!("{p}.Ipv6AddressCount"), n.ipv6_address_count);
    }
    for (i, resource) in ["instance", "volume", "network-interface"]
        .iter()
        .enumerate()
    {
        let p = format!("TagSpecification.{}", i + 1);
        a.set(format!("{p}.ResourceType"), *resource);
        let mut n = 0;
        for (k, v) in spec.tags.iter().filter(|(k, _)| k.as_str() != "Name") {
            n += 1;
            a.set(format!("{p}.Tag.{n}.Key"), k)
                .set(format!("{p}.Tag.{n}.Value"), v);
        }
        n += 1;
        a.set(format!("{p}.Tag.{n}.Key"), "Name")
            .set(format!("{p}.Tag.{n}.Value"), machine_name);
    }
    if let Some(m) = &spec.instance_metadata_options {
        a.opt(
            "MetadataOptions.HttpEndpoint",
            Some(&m.http_endpoint).filter(|s| !s.is_empty()),
        );
        a.opt(
            "MetadataOptions.HttpTokens",
            Some(&m.http_tokens).filter(|s| !s.is_empty()),
        );
        a.opt(
            "MetadataOptions.HttpPutResponseHopLimit",
            m.http_put_response_hop_limit,
        );
        a.opt(
            "MetadataOptions.HttpProtocolIpv6",
            Some(&m.http_protocol_ipv6).filter(|s| !s.is_empty()),
        );
    }
    if let Some(c) = &spec.cpu_options {
        a.opt("CpuOptions.CoreCount", c.core_count);
        a.opt("CpuOptions.ThreadsPerCore", c.threads_per_core);
        a.opt("CpuOptions.AmdSevSnp", c.amd_sev_snp.as_deref());
    }
    if let Some(c) = &spec.capacity_reservation {
        let p = "CapacityReservationSpecification";
        a.opt(
            format!("{p}.CapacityReservationPreference"),
            Some(&c.capacity_reservation_preference).filter(|s| !s.is_empty()),
        );
        a.opt(
            format!("{p}.CapacityReservationTarget.CapacityReservationId"),
            c.capacity_reservation_id.as_deref(),
        );
        a.opt(
            format!("{p}.CapacityReservationTarget.CapacityReservationResourceGroupArn"),
            c.capacity_reservation_resource_group_arn.as_deref(),
        );
    }
    if let Some(m) = &spec.instance_market_options {
        a.set("InstanceMarketOptions.MarketType", &m.market_type);
    } else if let Some(price) = &spec.spot_price {
        a.set("InstanceMarketOptions.MarketType", "spot");
        a.set(
            "InstanceMarketOptions.SpotOptions.SpotInstanceType",
            "one-time",
        );
        a.opt(
            "InstanceMarketOptions.SpotOptions.MaxPrice",
            Some(price).filter(|p| !p.is_empty()),
        );
    }
    if let Some(p) = &spec.placement {
        a.opt("Placement.GroupId", p.group_id.as_deref());
        a.opt("Placement.Tenancy", p.tenancy.as_deref());
        a.opt("Placement.HostId", p.host_id.as_deref());
        a.opt("Placement.PartitionNumber", p.partition_number);
        a.opt("Placement.Affinity", p.affinity.as_deref());
    }
    if spec.ebs_optimized {
        a.set("EbsOptimized", "true");
    }
    if spec.monitoring {
        a.set("Monitoring.Enabled", "true");
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{self, tests::good_spec};

    #[test]
    fn encoding_is_rfc3986() {
        let mut s = String::new();
        encode_into("a b/c=d+e~_.-ü", &mut s);
        assert_eq!(s, "a%20b%2Fc%3Dd%2Be~_.-%C3%BC");
    }

    #[test]
    fn filters_and_body() {
        let a = describe_machines(
            &["m1"],
            "kubernetes.io/cluster/c",
            "kubernetes.io/role/node",
            None,
        );
        assert_eq!(a.get("Filter.1.Name"), Some("tag:Name"));
        assert_eq!(a.get("Filter.1.Value.1"), Some("m1"));
        assert_eq!(a.get("Filter.4.Value.4"), Some("stopped"));
        assert!(
            a.body().starts_with(
                "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3AName&"
            )
        );
        let l = describe_class("c", "r", Some(5), Some("tok/=="));
        assert_eq!(l.get("MaxResults"), Some("5"));
        assert!(l.body().ends_with("NextToken=tok%2F%3D%3D"));
    }

    #[test]
    fn client_token_is_stable_and_short() {
        let t = client_token("ns", "m1", "uid-1");
        assert_eq!(t, client_token("ns", "m1", "uid-1"));
        assert_ne!(t, client_token("ns", "m1", "uid-2"));
        assert!(t.len() <= 64 && t.is_ascii());
    }

    #[test]
    fn run_instances_parameters() {
        let mut v = good_spec();
        v["blockDevices"] = serde_json::json!([
            {"deviceName": "/root", "ebs": {"volumeSize": 50, "volumeType": "gp3", "encrypted": true}},
            {"deviceName": "/dev/sdb", "ebs": {"volumeSize": 100, "volumeType": "io1", "iops": 3000, "deleteOnTermination": false, "kmsKeyID": "k"}},
        ]);
        v["srcAndDstChecksEnabled"] = false.into();
        v["spotPrice"] = "".into();
        v["instanceMetadataOptions"] =
            serde_json::json!({"httpTokens": "required", "httpPutResponseHopLimit": 2});
        v["tags"]["Name"] = "ignored".into();
        let spec = spec::parse(&v.to_string()).unwrap();
        let a = run_instances(&spec, "m1", b"#!/bin/sh", "/dev/xvda", "tok");
        assert_eq!(a.get("ImageId"), Some("ami-0123456789abcdef0"));
        assert_eq!(a.get("InstanceType"), Some("m5.large"));
        assert_eq!(a.get("UserData"), Some("IyEvYmluL3No"));
        assert_eq!(a.get("ClientToken"), Some("tok"));
        assert_eq!(a.get("IamInstanceProfile.Name"), Some("nodes"));
        assert_eq!(a.get("KeyName"), Some("ssh"));
        assert_eq!(a.get("BlockDeviceMapping.1.DeviceName"), Some("/dev/xvda"));
        assert_eq!(a.get("BlockDeviceMapping.1.Ebs.Encrypted"), Some("true"));
        assert_eq!(
            a.get("BlockDeviceMapping.1.Ebs.DeleteOnTermination"),
            Some("true")
        );
        assert_eq!(a.get("BlockDeviceMapping.2.DeviceName"), Some("/dev/sdb"));
        assert_eq!(a.get("BlockDeviceMapping.2.Ebs.Iops"), Some("3000"));
        assert_eq!(
            a.get("BlockDeviceMapping.2.Ebs.DeleteOnTermination"),
            Some("false")
        );
        assert_eq!(a.get("BlockDeviceMapping.2.Ebs.KmsKeyId"), Some("k"));
        assert_eq!(a.get("NetworkInterface.1.DeviceIndex"), Some("0"));
        assert_eq!(a.get("NetworkInterface.1.SecurityGroupId.1"), Some("sg-1"));
        assert_eq!(a.get("TagSpecification.1.ResourceType"), Some("instance"));
        assert_eq!(
            a.get("TagSpecification.1.Tag.1.Key"),
            Some("kubernetes.io/cluster/shoot--a")
        );
        assert_eq!(a.get("TagSpecification.1.Tag.3.Key"), Some("Name"));
        assert_eq!(a.get("TagSpecification.1.Tag.3.Value"), Some("m1"));
        assert_eq!(
            a.get("TagSpecification.1.Tag.4.Key"),
            None,
            "the class's Name tag is replaced"
        );
        assert_eq!(
            a.get("TagSpecification.3.ResourceType"),
            Some("network-interface")
        );
        assert_eq!(a.get("InstanceMarketOptions.MarketType"), Some("spot"));
        assert_eq!(a.get("InstanceMarketOptions.SpotOptions.MaxPrice"), None);
        assert_eq!(a.get("MetadataOptions.HttpTokens"), Some("required"));
        assert_eq!(a.get("MetadataOptions.HttpPutResponseHopLimit"), Some("2"));
        assert_eq!(a.get("MetadataOptions.HttpEndpoint"), None);
    }
}

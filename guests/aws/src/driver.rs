//! The driver operations over an [`Ec2`] client (generic over the transport, so the flows are
//! tested natively with a scripted EC2).

use mcm_wasm_sdk::{
    Code, CreateMachineResponse, DeleteMachineResponse, DriverError, GetMachineStatusResponse,
    GetVolumeIdsRequest, GetVolumeIdsResponse, InitializeMachineResponse, ListMachinesRequest,
    ListMachinesResponse, Machine, MachineRequest, NodeAddress,
};
use serde::Deserialize;

use crate::ec2::{Ec2, Transport};
use crate::query;
use crate::regions;
use crate::spec::{self, ProviderSpec};
use crate::xml::{self, Instance};

/// The operator's configuration of the provider (`ProviderSettings.config`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// EC2 endpoint override (e.g. `http://127.0.0.1:5000` for moto); default: the regional
    /// endpoint `https://ec2.<region>.amazonaws.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// DescribeInstances page size of list-machines (EC2 allows 5-1000; default: EC2's).
    #[serde(default)]
    pub page_size: Option<u32>,
}

impl Config {
    pub fn endpoint(&self, region: &str) -> String {
        match &self.endpoint {
            Some(e) if !e.is_empty() => e.clone(),
            _ => regions::ec2_endpoint(region),
        }
    }
}

pub const PROVIDER_ID_PREFIX: &str = "aws:///";
pub const EBS_CSI_DRIVER: &str = "ebs.csi.aws.com";

pub fn invalid(e: spec::Errors) -> DriverError {
    DriverError::invalid_argument(e.to_string())
}

pub fn provider_id(region: &str, instance_id: &str) -> String {
    format!("{PROVIDER_ID_PREFIX}{region}/{instance_id}")
}

/// `aws:///<region>/<instance-id>` -> (region, instance-id).
pub fn decode_provider_id(id: &str) -> Result<(String, String), DriverError> {
    let bad = || {
        DriverError::invalid_argument(format!(
            "machine spec.providerID {id:?} is not of the form aws:///<region>/<instance-id>"
        ))
    };
    let rest = id.strip_prefix("aws://").ok_or_else(bad)?;
    let mut parts = rest.rsplit('/');
    let instance = parts
        .next()
        .filter(|s| s.starts_with("i-") && s.len() > 2)
        .ok_or_else(bad)?;
    let region = parts.next().filter(|s| !s.is_empty()).ok_or_else(bad)?;
    Ok((region.to_string(), instance.to_string()))
}

fn client<'t, T: Transport>(
    t: &'t T,
    cfg: &Config,
    region: &str,
    secret: &[(String, Vec<u8>)],
) -> Result<Ec2<'t, T>, DriverError> {
    let signing = spec::signing(secret, t.brokered()).map_err(invalid)?;
    Ok(Ec2::new(t, &cfg.endpoint(region), region, signing))
}

fn addresses(i: &Instance) -> Vec<NodeAddress> {
    let mut out = Vec::new();
    let mut add = |kind: &str, v: &Option<String>| {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            out.push(NodeAddress {
                kind: kind.into(),
                address: v.into(),
            });
        }
    };
    add("InternalIP", &i.private_ip_address);
    add("ExternalIP", &i.ip_address);
    add("InternalDNS", &i.private_dns_name);
    add("Hostname", &i.private_dns_name);
    out
}

/// Does the instance carry the class's cluster and role tag keys? EC2 ANDs the two `tag-key`
/// filters; some EC2 implementations (moto) keep only the last filter of a name, so the
/// answer is checked here as well.
fn of_class(i: &Instance, spec: &ProviderSpec) -> bool {
    i.tag(spec.cluster_tag()).is_some() && i.tag(spec.role_tag()).is_some()
}

/// The live instances tagged for this machine.
fn find_by_tags<T: Transport>(
    ec2: &Ec2<T>,
    spec: &ProviderSpec,
    name: &str,
) -> Result<Vec<Instance>, DriverError> {
    let mut found = ec2.describe_all(|token| {
        query::describe_machine(name, spec.cluster_tag(), spec.role_tag(), token)
    })?;
    found.retain(|i| of_class(i, spec) && i.tag("Name") == Some(name));
    Ok(found)
}

/// The machine's instances: by tags, else by the providerID.
fn find_machine<T: Transport>(
    ec2: &Ec2<T>,
    spec: &ProviderSpec,
    machine: &Machine,
) -> Result<Vec<Instance>, DriverError> {
    let found = if machine.name.is_empty() {
        Vec::new()
    } else {
        find_by_tags(ec2, spec, &machine.name)?
    };
    if !found.is_empty() || machine.provider_id.is_empty() {
        return Ok(found);
    }
    let (_, id) = decode_provider_id(&machine.provider_id)?;
    Ok(ec2.instance_by_id(&id)?.into_iter().collect())
}

fn one<'a>(instances: &'a [Instance], machine: &Machine) -> Result<&'a Instance, DriverError> {
    match instances {
        [] => Err(DriverError::not_found(format!(
            "no EC2 instance backs machine {:?}",
            machine.name
        ))),
        [i] => Ok(i),
        many => {
            let ids: Vec<&str> = many.iter().map(|i| i.instance_id.as_str()).collect();
            Err(DriverError::new(
                Code::OutOfRange,
                format!(
                    "{} EC2 instances back machine {:?}: {}; expected one",
                    many.len(),
                    machine.name,
                    ids.join(", ")
                ),
            ))
        }
    }
}

fn needs_src_dst_disabled(spec: &ProviderSpec, i: &Instance) -> bool {
    spec.src_and_dst_checks_enabled == Some(false) && i.source_dest_check != Some(false)
}

pub fn create<T: Transport>(
    t: &T,
    cfg: &Config,
    req: &MachineRequest,
) -> Result<CreateMachineResponse, DriverError> {
    let (spec, creds) =
        spec::validate_class(&req.machine_class.provider_spec, &req.secret, t.brokered())
            .map_err(invalid)?;
    let user_data = spec::user_data(&req.secret).map_err(invalid)?;
    let machine = &req.machine;
    if machine.name.is_empty() {
        return Err(DriverError::invalid_argument("machine.name is required"));
    }
    let ec2 = Ec2::new(t, &cfg.endpoint(&spec.region), &spec.region, creds);

    // Idempotent: an instance already tagged for this machine is the machine's VM (this also
    // covers a RunInstances whose answer was lost). The ClientToken makes the RunInstances
    // itself idempotent on EC2.
    let existing = find_by_tags(&ec2, &spec, &machine.name)?;
    let mut instance = match existing.len() {
        0 => run_instance(&ec2, &spec, machine, &user_data)?,
        _ => one(&existing, machine)?.clone(),
    };
    if instance.private_dns_name().is_empty()
        && let Some(fresh) = ec2.instance_by_id(&instance.instance_id)?
    {
        instance = fresh;
    }
    if needs_src_dst_disabled(&spec, &instance) {
        ec2.call(&query::disable_source_dest_check(&instance.instance_id))?;
    }
    let node_name = instance.private_dns_name().to_string();
    if node_name.is_empty() {
        return Err(DriverError::unavailable(format!(
            "EC2 instance {} of machine {:?} has no private DNS name yet",
            instance.instance_id, machine.name
        )));
    }
    Ok(CreateMachineResponse {
        provider_id: provider_id(&spec.region, &instance.instance_id),
        node_name,
        last_known_state: format!(
            "EC2 instance {} is {}",
            instance.instance_id, instance.instance_state.name
        ),
        addresses: addresses(&instance),
    })
}

fn run_instance<T: Transport>(
    ec2: &Ec2<T>,
    spec: &ProviderSpec,
    machine: &Machine,
    user_data: &[u8],
) -> Result<Instance, DriverError> {
    let images: xml::DescribeImages = ec2.call_xml(&query::describe_image(&spec.ami))?;
    let image = images.images_set.item.into_iter().next().ok_or_else(|| {
        DriverError::not_found(format!(
            "AMI {} not found in region {}",
            spec.ami, spec.region
        ))
    })?;
    let root = image
        .root_device_name
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            DriverError::invalid_argument(format!("AMI {} has no root device name", spec.ami))
        })?;
    let token = query::client_token(&machine.namespace, &machine.name, &machine.uid);
    let run: xml::RunInstances = ec2.call_xml(&query::run_instances(
        spec,
        &machine.name,
        user_data,
        &root,
        &token,
    ))?;
    run.instances_set
        .item
        .into_iter()
        .find(|i| !i.instance_id.is_empty())
        .ok_or_else(|| {
            DriverError::internal(format!(
                "EC2 RunInstances for machine {:?} returned no instance",
                machine.name
            ))
        })
}

pub fn delete<T: Transport>(
    t: &T,
    cfg: &Config,
    req: &MachineRequest,
) -> Result<DeleteMachineResponse, DriverError> {
    let machine = &req.machine;
    if !machine.provider_id.is_empty() {
        // From the providerID alone: even a class that no longer validates cannot block it.
        let (region, id) = decode_provider_id(&machine.provider_id)?;
        if !regions::is_known(&region) {
            return Err(DriverError::invalid_argument(format!(
                "machine spec.providerID names unknown AWS region {region:?}"
            )));
        }
        let ec2 = client(t, cfg, &region, &req.secret)?;
        return terminate(&ec2, &id);
    }
    let spec = spec::parse(&req.machine_class.provider_spec).map_err(invalid)?;
    let ec2 = client(t, cfg, &spec.region, &req.secret)?;
    let instances = find_by_tags(&ec2, &spec, &machine.name)?;
    if instances.is_empty() {
        return Ok(DeleteMachineResponse {
            last_known_state: format!("no EC2 instance for machine {:?}", machine.name),
        });
    }
    let mut states = Vec::new();
    for i in &instances {
        states.push(terminate(&ec2, &i.instance_id)?.last_known_state);
    }
    Ok(DeleteMachineResponse {
        last_known_state: states.join("; "),
    })
}

fn terminate<T: Transport>(ec2: &Ec2<T>, id: &str) -> Result<DeleteMachineResponse, DriverError> {
    let gone = || {
        Ok(DeleteMachineResponse {
            last_known_state: format!("EC2 instance {id} already gone"),
        })
    };
    match ec2.call(&query::terminate_instance(id)) {
        Ok(_) => Ok(DeleteMachineResponse {
            last_known_state: format!("EC2 instance {id} terminated"),
        }),
        Err(e) if e.error.code == Code::NotFound => gone(),
        // EC2 refused (not a transport failure): an instance that is already terminated or
        // shutting down is deleted, whatever the refusal was about.
        Err(e) if !e.aws_code.is_empty() => match ec2.instance_by_id(id) {
            Ok(None) => gone(),
            Ok(Some(_)) => Err(e.into()),
            // Whether it is gone is not known: the lookup's error (a throttled or failed
            // DescribeInstances: Unavailable, retried soon) decides, not the refusal, which
            // may be permanent-looking for an instance that is in fact terminated (moto
            // answers a second TerminateInstances with InvalidNetworkInterfaceID.NotFound).
            Err(lookup) => Err(lookup),
        },
        Err(e) => Err(e.into()),
    }
}

pub fn status<T: Transport>(
    t: &T,
    cfg: &Config,
    req: &MachineRequest,
) -> Result<GetMachineStatusResponse, DriverError> {
    let spec = spec::parse(&req.machine_class.provider_spec).map_err(invalid)?;
    let ec2 = client(t, cfg, &spec.region, &req.secret)?;
    let instances = find_machine(&ec2, &spec, &req.machine)?;
    answer_status(&spec, &instances, &req.machine)
}

/// Batch status (contract 0.1.2): the machines of one class and secret (as the host
/// batches them) looked up with one DescribeInstances per [`query::MAX_FILTER_VALUES`] names;
/// a machine not found by its tags but with a providerID is looked up by ID alone, as in
/// [`status`]. Requests of another class or secret than the first are answered one by one.
pub fn statuses<T: Transport>(
    t: &T,
    cfg: &Config,
    reqs: &[MachineRequest],
) -> Vec<Result<GetMachineStatusResponse, DriverError>> {
    let Some(first) = reqs.first() else {
        return Vec::new();
    };
    let same = |r: &MachineRequest| {
        r.machine_class.provider_spec == first.machine_class.provider_spec
            && r.secret == first.secret
            && !r.machine.name.is_empty()
    };
    let looked_up = (|| {
        let spec = spec::parse(&first.machine_class.provider_spec).map_err(invalid)?;
        let ec2 = client(t, cfg, &spec.region, &first.secret)?;
        let names: Vec<&str> = reqs
            .iter()
            .filter(|r| same(r))
            .map(|r| r.machine.name.as_str())
            .collect();
        let mut found = Vec::new();
        for chunk in names.chunks(query::MAX_FILTER_VALUES) {
            found.extend(ec2.describe_all(|token| {
                query::describe_machines(chunk, spec.cluster_tag(), spec.role_tag(), token)
            })?);
        }
        found.retain(|i| of_class(i, &spec));
        Ok::<_, DriverError>((spec, found))
    })();
    reqs.iter()
        .map(|req| {
            if !same(req) {
                return status(t, cfg, req);
            }
            let (spec, found) = looked_up.as_ref().map_err(Clone::clone)?;
            let mine: Vec<Instance> = found
                .iter()
                .filter(|i| i.tag("Name") == Some(req.machine.name.as_str()))
                .cloned()
                .collect();
            if mine.is_empty() && !req.machine.provider_id.is_empty() {
                return status(t, cfg, req);
            }
            answer_status(spec, &mine, &req.machine)
        })
        .collect()
}

/// The status answer for a machine whose instances are `instances`.
fn answer_status(
    spec: &ProviderSpec,
    instances: &[Instance],
    machine: &Machine,
) -> Result<GetMachineStatusResponse, DriverError> {
    let i = one(instances, machine)?;
    if needs_src_dst_disabled(spec, i) {
        return Err(DriverError::new(
            Code::Uninitialized,
            format!(
                "EC2 instance {} has source/destination checks on, but the class disables them",
                i.instance_id
            ),
        ));
    }
    Ok(GetMachineStatusResponse {
        provider_id: provider_id(&spec.region, &i.instance_id),
        node_name: i.private_dns_name().to_string(),
        addresses: addresses(i),
    })
}

/// Batch delete (contract 0.1.2): the machines with a providerID of one region and secret are
/// terminated with one TerminateInstances (EC2 takes up to 1,000 IDs); if EC2 refuses it
/// (e.g. one ID is already unknown), or for any other machine, each is deleted as by
/// [`delete`].
pub fn deletes<T: Transport>(
    t: &T,
    cfg: &Config,
    reqs: &[MachineRequest],
) -> Vec<Result<DeleteMachineResponse, DriverError>> {
    let by_id: Vec<Option<(String, String)>> = reqs
        .iter()
        .map(|r| decode_provider_id(&r.machine.provider_id).ok())
        .collect();
    let Some((region, _)) = by_id.iter().flatten().next().cloned() else {
        return reqs.iter().map(|r| delete(t, cfg, r)).collect();
    };
    let secret = &reqs[by_id.iter().position(Option::is_some).expect("one has an ID")].secret;
    let batched: Vec<bool> = reqs
        .iter()
        .zip(&by_id)
        .map(|(r, id)| id.as_ref().is_some_and(|(reg, _)| *reg == region) && &r.secret == secret)
        .collect();
    let ids: Vec<&str> = by_id
        .iter()
        .zip(&batched)
        .filter(|(_, b)| **b)
        .filter_map(|(id, _)| id.as_ref().map(|(_, i)| i.as_str()))
        .collect();
    let terminated = regions::is_known(&region)
        && client(t, cfg, &region, secret)
            .is_ok_and(|ec2| ids.chunks(1000).all(|c| ec2.call(&query::terminate_instances(c)).is_ok()));
    reqs.iter()
        .zip(by_id.iter().zip(&batched))
        .map(|(req, (id, batched))| match (terminated && *batched, id) {
            (true, Some((_, id))) => Ok(DeleteMachineResponse {
                last_known_state: format!("EC2 instance {id} terminated"),
            }),
            _ => delete(t, cfg, req),
        })
        .collect()
}

/// provider-aws (v0.2x): disable source/destination checks when the class asks for it; a
/// machine without a VM is Uninitialized.
pub fn initialize<T: Transport>(
    t: &T,
    cfg: &Config,
    req: &MachineRequest,
) -> Result<InitializeMachineResponse, DriverError> {
    let spec = spec::parse(&req.machine_class.provider_spec).map_err(invalid)?;
    if spec.src_and_dst_checks_enabled != Some(false) {
        // Nothing to initialize (create already applied everything the class asks for): no
        // cloud request; the answer carries the machine's providerID (MCM's controller sets it
        // before it initializes) and nothing looked up.
        return Ok(InitializeMachineResponse {
            provider_id: req.machine.provider_id.clone(),
            node_name: String::new(),
            addresses: Vec::new(),
        });
    }
    let ec2 = client(t, cfg, &spec.region, &req.secret)?;
    let instances = find_machine(&ec2, &spec, &req.machine)?;
    let i = match one(&instances, &req.machine) {
        Err(e) if e.code == Code::NotFound => {
            return Err(DriverError::new(Code::Uninitialized, e.message));
        }
        other => other?,
    };
    if needs_src_dst_disabled(&spec, i) {
        ec2.call(&query::disable_source_dest_check(&i.instance_id))
            .map_err(|e| DriverError::new(Code::Uninitialized, e.error.message))?;
    }
    Ok(InitializeMachineResponse {
        provider_id: provider_id(&spec.region, &i.instance_id),
        node_name: i.private_dns_name().to_string(),
        addresses: addresses(i),
    })
}

pub fn list<T: Transport>(
    t: &T,
    cfg: &Config,
    req: &ListMachinesRequest,
) -> Result<ListMachinesResponse, DriverError> {
    let spec = spec::parse(&req.machine_class.provider_spec).map_err(invalid)?;
    let ec2 = client(t, cfg, &spec.region, &req.secret)?;
    let instances = ec2.describe_all(|token| {
        query::describe_class(spec.cluster_tag(), spec.role_tag(), cfg.page_size, token)
    })?;
    let mut machines: Vec<(String, String)> = instances
        .iter()
        .filter(|i| of_class(i, &spec))
        .map(|i| {
            (
                provider_id(&spec.region, &i.instance_id),
                i.tag("Name").unwrap_or("").to_string(),
            )
        })
        .collect();
    machines.sort();
    machines.dedup();
    Ok(ListMachinesResponse { machines })
}

/// EBS volume IDs of in-tree `awsElasticBlockStore` and CSI `ebs.csi.aws.com` volumes.
pub fn volume_ids(req: &GetVolumeIdsRequest) -> Result<GetVolumeIdsResponse, DriverError> {
    let mut volume_ids = Vec::new();
    for (n, text) in req.pv_specs.iter().enumerate() {
        let spec: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            DriverError::invalid_argument(format!(
                "pvSpecs[{n}] is not a PersistentVolumeSpec: {e}"
            ))
        })?;
        if let Some(id) = spec["awsElasticBlockStore"]["volumeID"].as_str() {
            if let Some(v) = ebs_volume_id(id) {
                volume_ids.push(v);
            }
        } else if spec["csi"]["driver"] == EBS_CSI_DRIVER
            && let Some(h) = spec["csi"]["volumeHandle"]
                .as_str()
                .filter(|h| !h.is_empty())
        {
            volume_ids.push(h.to_string());
        }
    }
    Ok(GetVolumeIdsResponse { volume_ids })
}

/// In-tree volume IDs are `vol-…` or `aws://<zone>/vol-…`.
fn ebs_volume_id(id: &str) -> Option<String> {
    let Some(rest) = id.strip_prefix("aws://") else {
        return Some(id.to_string()).filter(|s| !s.is_empty());
    };
    let vol = rest.trim_matches('/').rsplit('/').next()?;
    (vol.starts_with("vol-") && !vol.contains('/')).then(|| vol.to_string())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use mcm_wasm_sdk::MachineClass;
    use mcm_wasm_sdk::http::{Error as HttpError, Request, Response};

    use super::*;
    use crate::spec::tests::{good_spec, secret};

    /// A scripted EC2: answers by action name, records every action.
    #[derive(Default)]
    struct Scripted {
        answers: RefCell<Vec<(&'static str, u16, String)>>,
        seen: RefCell<Vec<String>>,
    }

    impl Scripted {
        fn on(self, action: &'static str, status: u16, body: &str) -> Self {
            self.answers
                .borrow_mut()
                .push((action, status, body.to_string()));
            self
        }
        fn actions(&self) -> Vec<String> {
            self.seen
                .borrow()
                .iter()
                .map(|b| {
                    b.split('&')
                        .next()
                        .unwrap()
                        .trim_start_matches("Action=")
                        .to_string()
                })
                .collect()
        }
    }

    impl Transport for Scripted {
        fn send(&self, req: &Request) -> Result<Response, HttpError> {
            let body = String::from_utf8(req.body.clone()).unwrap();
            assert!(
                req.headers
                    .iter()
                    .any(|(k, v)| k == "authorization" && v.starts_with("AWS4-HMAC-SHA256 "))
            );
            self.seen.borrow_mut().push(body.clone());
            let mut answers = self.answers.borrow_mut();
            let pos = answers
                .iter()
                .position(|(a, _, _)| body.starts_with(&format!("Action={a}&")))
                .unwrap_or_else(|| panic!("unexpected request {body}"));
            let (_, status, text) = answers.remove(pos);
            Ok(Response {
                status,
                headers: vec![],
                body: text.into_bytes(),
            })
        }
    }

    fn instance_xml(wrapper: &str, id: &str) -> String {
        format!(
            "<{wrapper}><reservationSet><item><instancesSet><item><instanceId>{id}</instanceId><instanceState><name>running</name></instanceState>\
             <privateDnsName>ip-10-0-0-1.eu-west-1.compute.internal</privateDnsName><privateIpAddress>10.0.0.1</privateIpAddress>\
             <tagSet><item><key>Name</key><value>m1</value></item><item><key>kubernetes.io/cluster/shoot--a</key><value>1</value></item>\
             <item><key>kubernetes.io/role/node</key><value>1</value></item></tagSet></item></instancesSet></item></reservationSet></{wrapper}>"
        )
    }
    const NONE: &str = "<DescribeInstancesResponse><reservationSet/></DescribeInstancesResponse>";

    fn request() -> MachineRequest {
        MachineRequest {
            machine: Machine {
                name: "m1".into(),
                namespace: "ns".into(),
                uid: "u1".into(),
                provider_id: String::new(),
                labels: vec![],
            },
            machine_class: MachineClass {
                name: "c".into(),
                provider: "aws".into(),
                provider_spec: good_spec().to_string(),
                node_template: None,
            },
            secret: secret(),
        }
    }

    #[test]
    fn create_runs_one_instance_when_none_exists() {
        let ec2 = Scripted::default()
            .on("DescribeInstances", 200, NONE)
            .on("DescribeImages", 200, "<DescribeImagesResponse><imagesSet><item><imageId>ami-1</imageId><rootDeviceName>/dev/xvda</rootDeviceName></item></imagesSet></DescribeImagesResponse>")
            .on("RunInstances", 200, &instance_xml("RunInstancesResponse", "i-0abc").replace("<reservationSet><item>", "").replace("</item></reservationSet>", ""));
        let r = create(&ec2, &Config::default(), &request()).unwrap();
        assert_eq!(r.provider_id, "aws:///eu-west-1/i-0abc");
        assert_eq!(r.node_name, "ip-10-0-0-1.eu-west-1.compute.internal");
        assert_eq!(
            ec2.actions(),
            ["DescribeInstances", "DescribeImages", "RunInstances"]
        );
        let run = &ec2.seen.borrow()[2];
        assert!(
            run.contains("BlockDeviceMapping.1.DeviceName=%2Fdev%2Fxvda"),
            "{run}"
        );
        assert!(
            run.contains(&format!(
                "ClientToken={}",
                query::client_token("ns", "m1", "u1")
            )),
            "{run}"
        );
    }

    #[test]
    fn create_returns_the_existing_instance() {
        let ec2 = Scripted::default().on(
            "DescribeInstances",
            200,
            &instance_xml("DescribeInstancesResponse", "i-0abc"),
        );
        let r = create(&ec2, &Config::default(), &request()).unwrap();
        assert_eq!(r.provider_id, "aws:///eu-west-1/i-0abc");
        assert_eq!(ec2.actions(), ["DescribeInstances"]);
    }

    #[test]
    fn two_instances_for_one_machine_is_out_of_range() {
        let second = instance_xml("X", "i-2")
            .replace("<X><reservationSet>", "")
            .replace("</reservationSet></X>", "");
        let two = instance_xml("DescribeInstancesResponse", "i-1")
            .replace("</reservationSet>", &format!("{second}</reservationSet>"));
        let ec2 = Scripted::default().on("DescribeInstances", 200, &two);
        let e = status(&ec2, &Config::default(), &request()).unwrap_err();
        assert_eq!(e.code, Code::OutOfRange);
        assert!(e.message.contains("i-1, i-2"), "{}", e.message);
    }

    #[test]
    fn errors_are_mapped() {
        let throttled = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors></Response>";
        let ec2 = Scripted::default().on("DescribeInstances", 503, throttled);
        let e = create(&ec2, &Config::default(), &request()).unwrap_err();
        assert_eq!(e.code, Code::Unavailable);
        assert!(
            e.message.contains("RequestLimitExceeded")
                && e.message.contains("Request limit exceeded."),
            "{}",
            e.message
        );
        let ec2 = Scripted::default().on("DescribeInstances", 502, "<html>Bad Gateway</html>");
        assert_eq!(
            create(&ec2, &Config::default(), &request())
                .unwrap_err()
                .code,
            Code::Unavailable
        );
    }

    #[test]
    fn delete_by_provider_id_treats_gone_as_success() {
        let gone = "<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code><Message>nope</Message></Error></Errors></Response>";
        let ec2 = Scripted::default().on("TerminateInstances", 400, gone);
        let mut req = request();
        req.machine.provider_id = "aws:///eu-west-1/i-0abc".into();
        req.machine_class.provider_spec = "{}".into(); // not needed with a providerID
        let r = delete(&ec2, &Config::default(), &req).unwrap();
        assert!(r.last_known_state.contains("already gone"));
        assert!(ec2.seen.borrow()[0].contains("InstanceId.1=i-0abc"));
    }

    #[test]
    fn terminate_refused_for_an_instance_already_terminated_is_success() {
        let refused = "<Response><Errors><Error><Code>IncorrectInstanceState</Code><Message>x</Message></Error></Errors></Response>";
        let terminated = instance_xml("DescribeInstancesResponse", "i-0abc")
            .replace("<name>running</name>", "<name>terminated</name>");
        let ec2 = Scripted::default()
            .on("TerminateInstances", 400, refused)
            .on("DescribeInstances", 200, &terminated);
        let mut req = request();
        req.machine.provider_id = "aws:///eu-west-1/i-0abc".into();
        assert!(
            delete(&ec2, &Config::default(), &req)
                .unwrap()
                .last_known_state
                .contains("already gone")
        );
        // Still running: the refusal stands.
        let ec2 = Scripted::default()
            .on("TerminateInstances", 400, refused)
            .on(
                "DescribeInstances",
                200,
                &instance_xml("DescribeInstancesResponse", "i-0abc"),
            );
        assert_eq!(
            delete(&ec2, &Config::default(), &req).unwrap_err().code,
            Code::Internal
        );
    }

    /// A refusal followed by a lookup that fails (throttled): the lookup's transient error is
    /// the answer, so the deletion retries soon instead of taking the refusal as final (the
    /// chaos run left a terminated VM's Machine Terminating behind an InvalidArgument).
    #[test]
    fn terminate_refused_then_lookup_throttled_is_unavailable() {
        let refused = "<Response><Errors><Error><Code>InvalidNetworkInterfaceID.NotFound</Code><Message>x</Message></Error></Errors></Response>";
        let throttled = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>slow down</Message></Error></Errors></Response>";
        let ec2 = Scripted::default()
            .on("TerminateInstances", 400, refused)
            .on("DescribeInstances", 503, throttled);
        let mut req = request();
        req.machine.provider_id = "aws:///eu-west-1/i-0abc".into();
        assert_eq!(
            delete(&ec2, &Config::default(), &req).unwrap_err().code,
            Code::Unavailable
        );
    }

    #[test]
    fn bad_input_makes_no_call() {
        let ec2 = Scripted::default();
        let mut req = request();
        req.secret.retain(|(k, _)| k != "providerAccessKeyId");
        assert_eq!(
            create(&ec2, &Config::default(), &req).unwrap_err().code,
            Code::InvalidArgument
        );
        assert_eq!(
            status(&ec2, &Config::default(), &req).unwrap_err().code,
            Code::InvalidArgument
        );
        req.machine.provider_id = "aws:///eu-west-1/bogus".into();
        assert_eq!(
            delete(&ec2, &Config::default(), &req).unwrap_err().code,
            Code::InvalidArgument
        );
        assert!(ec2.seen.borrow().is_empty());
    }

    #[test]
    fn list_follows_next_token() {
        let page1 = instance_xml("DescribeInstancesResponse", "i-1").replace(
            "</reservationSet>",
            "</reservationSet><nextToken>t2</nextToken>",
        );
        let page2 = instance_xml("DescribeInstancesResponse", "i-2");
        let ec2 = Scripted::default().on("DescribeInstances", 200, &page1).on(
            "DescribeInstances",
            200,
            &page2,
        );
        let cfg = Config {
            endpoint: Some("http://127.0.0.1:1".into()),
            page_size: Some(5),
        };
        let req = ListMachinesRequest {
            machine_class: request().machine_class,
            secret: secret(),
        };
        let r = list(&ec2, &cfg, &req).unwrap();
        assert_eq!(r.machines.len(), 2);
        assert!(
            ec2.seen.borrow()[1].contains("NextToken=t2")
                && ec2.seen.borrow()[1].contains("MaxResults=5")
        );
    }

    #[test]
    fn instances_of_other_clusters_are_not_the_machines() {
        let foreign =
            instance_xml("DescribeInstancesResponse", "i-9").replace("shoot--a", "shoot--b");
        let ec2 = Scripted::default().on("DescribeInstances", 200, &foreign);
        assert_eq!(
            status(&ec2, &Config::default(), &request())
                .unwrap_err()
                .code,
            Code::NotFound
        );
        let ec2 = Scripted::default().on("DescribeInstances", 200, &foreign);
        let req = ListMachinesRequest {
            machine_class: request().machine_class,
            secret: secret(),
        };
        assert!(
            list(&ec2, &Config::default(), &req)
                .unwrap()
                .machines
                .is_empty()
        );
    }

    #[test]
    fn volume_ids_from_in_tree_and_csi() {
        let req = GetVolumeIdsRequest {
            pv_specs: vec![
                r#"{"awsElasticBlockStore": {"volumeID": "aws://eu-west-1a/vol-1"}}"#.into(),
                r#"{"awsElasticBlockStore": {"volumeID": "vol-2"}}"#.into(),
                r#"{"csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-3"}}"#.into(),
                r#"{"csi": {"driver": "other", "volumeHandle": "vol-4"}}"#.into(),
                r#"{"nfs": {"server": "x"}}"#.into(),
            ],
        };
        assert_eq!(
            volume_ids(&req).unwrap().volume_ids,
            ["vol-1", "vol-2", "vol-3"]
        );
    }

    #[test]
    fn provider_ids() {
        assert_eq!(
            decode_provider_id("aws:///eu-west-1/i-0abc").unwrap(),
            ("eu-west-1".into(), "i-0abc".into())
        );
        assert!(decode_provider_id("gce:///x/i-1").is_err());
        assert!(decode_provider_id("aws:///eu-west-1/").is_err());
    }
}

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
    find_all_by_tags(ec2, spec, &[name])
}

/// The machine's instances: the live instance of its providerID when it has one (as
/// provider-aws looks a machine up), else the live instances tagged for it.
fn find_machine<T: Transport>(
    ec2: &Ec2<T>,
    spec: &ProviderSpec,
    machine: &Machine,
) -> Result<Vec<Instance>, DriverError> {
    let by_id = (!machine.provider_id.is_empty()).then(|| decode_provider_id(&machine.provider_id));
    if let Some(Ok((_, id))) = &by_id
        && let Some(i) = ec2.instance_by_id(id)?
    {
        return Ok(vec![i]);
    }
    let found = if machine.name.is_empty() {
        Vec::new()
    } else {
        find_by_tags(ec2, spec, &machine.name)?
    };
    match by_id {
        // Nothing by tags either: the malformed providerID is the answer, as before.
        Some(Err(e)) if found.is_empty() => Err(e),
        _ => Ok(found),
    }
}

/// The live instances tagged for any of `names` (one DescribeInstances per
/// [`query::MAX_FILTER_VALUES`] names).
fn find_all_by_tags<T: Transport>(
    ec2: &Ec2<T>,
    spec: &ProviderSpec,
    names: &[&str],
) -> Result<Vec<Instance>, DriverError> {
    let mut found = Vec::new();
    for chunk in names.chunks(query::MAX_FILTER_VALUES) {
        found.extend(ec2.describe_all(|token| {
            query::describe_machines(chunk, spec.cluster_tag(), spec.role_tag(), token)
        })?);
    }
    found.retain(|i| of_class(i, spec) && i.tag("Name").is_some_and(|n| names.contains(&n)));
    Ok(found)
}

/// The live instances of `ids` (one DescribeInstances per [`query::MAX_FILTER_VALUES`] IDs).
fn find_all_by_id<T: Transport>(ec2: &Ec2<T>, ids: &[&str]) -> Result<Vec<Instance>, DriverError> {
    let mut found = Vec::new();
    for chunk in ids.chunks(query::MAX_FILTER_VALUES) {
        found.extend(ec2.describe_all(|token| query::describe_instances_by_id(chunk, token))?);
    }
    found.retain(|i| query::LIVE_STATES.contains(&i.instance_state.name.as_str()));
    Ok(found)
}

/// The secret's entries but `userData`: what the requests of one batch share.
fn credentials(secret: &[(String, Vec<u8>)]) -> Vec<&(String, Vec<u8>)> {
    secret
        .iter()
        .filter(|(k, _)| k != spec::USER_DATA_KEY)
        .collect()
}

/// Can `req` be served with `first`'s lookups: the same class and credentials, and a name?
fn same_batch(first: &MachineRequest, req: &MachineRequest) -> bool {
    req.machine_class.provider_spec == first.machine_class.provider_spec
        && credentials(&req.secret) == credentials(&first.secret)
        && !req.machine.name.is_empty()
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
    let instance = match existing.len() {
        0 => {
            let root = root_device(&ec2, &spec)?;
            let run = ec2.call(&run_action(&spec, machine, &user_data, &root));
            launched(run.map_err(DriverError::from), machine)?
        }
        _ => one(&existing, machine)?.clone(),
    };
    answer_create(&ec2, &spec, machine, instance)
}

/// Batch create (contract 0.1.3): the machines of one class and credentials (each with its
/// own `userData`) looked up with one DescribeInstances per [`query::MAX_FILTER_VALUES`]
/// names, the AMI read once, and one RunInstances for each machine without a VM (EC2's
/// RunInstances takes one user data, so one request per machine stays), all sent at once
/// (`http.send-many`; each still waits for its own rate-limit token). Each entry is what
/// [`create`] would answer; requests of another class or credentials are created one by one.
/// A machine whose RunInstances (or follow-up request) would start with less than twice the
/// lookup's time left in the call is answered `unavailable` (asked again; its VM is found then).
pub fn creates<T: Transport>(
    t: &T,
    cfg: &Config,
    reqs: &[MachineRequest],
) -> Vec<Result<CreateMachineResponse, DriverError>> {
    let Some(first) = reqs.first() else {
        return Vec::new();
    };
    let at_start = t.remaining_millis();
    let validate = |r: &MachineRequest| {
        spec::validate_class(&r.machine_class.provider_spec, &r.secret, t.brokered())
            .map_err(invalid)
    };
    let looked_up = (|| {
        // The class and credentials are the batch's; a machine's own userData may still be
        // wrong: that machine's error, not the batch's.
        let (spec, creds) = reqs
            .iter()
            .filter(|r| same_batch(first, r))
            .find_map(|r| validate(r).ok())
            .map_or_else(|| validate(first), Ok)?;
        let ec2 = Ec2::new(t, &cfg.endpoint(&spec.region), &spec.region, creds);
        let names: Vec<&str> = reqs
            .iter()
            .filter(|r| same_batch(first, r))
            .map(|r| r.machine.name.as_str())
            .collect();
        let found = find_all_by_tags(&ec2, &spec, &names)?;
        Ok::<_, DriverError>((spec, ec2, found))
    })();
    let (spec, ec2, found) = match &looked_up {
        Ok(l) => l,
        Err(e) => {
            return reqs
                .iter()
                .map(|r| {
                    if same_batch(first, r) {
                        Err(e.clone())
                    } else {
                        create(t, cfg, r)
                    }
                })
                .collect();
        }
    };
    // Per machine: its VM found, a RunInstances to send, or its own error.
    enum Plan {
        Found(Vec<Instance>),
        Run(query::Action),
        Done(Result<CreateMachineResponse, DriverError>),
    }
    // The lookup's time is the measure of one request: with less than twice that left, a
    // RunInstances (or a follow-up request) is not started, and its machine is asked again.
    let one_request = at_start.saturating_sub(t.remaining_millis());
    let short = || t.remaining_millis() < one_request.saturating_mul(2);
    let mut root = None;
    let out_of_time = short();
    let mut plans: Vec<Plan> = reqs
        .iter()
        .map(|req| {
            if !same_batch(first, req) {
                return Plan::Done(create(t, cfg, req));
            }
            if let Err(e) = validate(req) {
                return Plan::Done(Err(e));
            }
            let mine: Vec<Instance> = found
                .iter()
                .filter(|i| i.tag("Name") == Some(req.machine.name.as_str()))
                .cloned()
                .collect();
            if !mine.is_empty() {
                return Plan::Found(mine);
            }
            let user_data = match spec::user_data(&req.secret).map_err(invalid) {
                Ok(u) => u,
                Err(e) => return Plan::Done(Err(e)),
            };
            if out_of_time {
                return Plan::Done(Err(DriverError::unavailable(format!(
                    "machine {:?} not created: its batch ran out of time (asked again)",
                    req.machine.name
                ))));
            }
            let root = root.get_or_insert_with(|| root_device(ec2, spec));
            match root {
                Ok(root) => Plan::Run(run_action(spec, &req.machine, &user_data, root)),
                Err(e) => Plan::Done(Err(e.clone())),
            }
        })
        .collect();
    let runs: Vec<&query::Action> = plans
        .iter()
        .filter_map(|p| match p {
            Plan::Run(a) => Some(a),
            _ => None,
        })
        .collect();
    let mut sent = ec2.call_many(&runs).into_iter();
    reqs.iter()
        .zip(plans.iter_mut())
        .map(|(req, plan)| {
            let machine = &req.machine;
            let instance = match std::mem::replace(plan, Plan::Found(Vec::new())) {
                Plan::Done(answer) => return answer,
                Plan::Found(mine) => one(&mine, machine)?.clone(),
                Plan::Run(_) => {
                    let run = sent.next().expect("one answer per RunInstances sent");
                    launched(run.map_err(DriverError::from), machine)?
                }
            };
            let follow_up =
                instance.private_dns_name().is_empty() || needs_src_dst_disabled(spec, &instance);
            if follow_up && short() {
                return Err(DriverError::unavailable(format!(
                    "EC2 instance {} of machine {:?} exists; its batch ran out of time to finish it (asked again)",
                    instance.instance_id, machine.name
                )));
            }
            answer_create(ec2, spec, machine, instance)
        })
        .collect()
}

/// The answer of a create whose VM is `instance`: its private DNS name (looked up again when
/// the answer had none yet) and source/destination checks as the class asks.
fn answer_create<T: Transport>(
    ec2: &Ec2<T>,
    spec: &ProviderSpec,
    machine: &Machine,
    mut instance: Instance,
) -> Result<CreateMachineResponse, DriverError> {
    if instance.private_dns_name().is_empty()
        && let Some(fresh) = ec2.instance_by_id(&instance.instance_id)?
    {
        instance = fresh;
    }
    if needs_src_dst_disabled(spec, &instance) {
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

/// The root device name of the class's AMI.
fn root_device<T: Transport>(ec2: &Ec2<T>, spec: &ProviderSpec) -> Result<String, DriverError> {
    let images: xml::DescribeImages = ec2.call_xml(&query::describe_image(&spec.ami))?;
    let image = images.images_set.item.into_iter().next().ok_or_else(|| {
        DriverError::not_found(format!(
            "AMI {} not found in region {}",
            spec.ami, spec.region
        ))
    })?;
    image
        .root_device_name
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            DriverError::invalid_argument(format!("AMI {} has no root device name", spec.ami))
        })
}

/// The machine's RunInstances, with its idempotency token.
fn run_action(
    spec: &ProviderSpec,
    machine: &Machine,
    user_data: &[u8],
    root: &str,
) -> query::Action {
    let token = query::client_token(&machine.namespace, &machine.name, &machine.uid);
    query::run_instances(spec, &machine.name, user_data, root, &token)
}

/// The instance a RunInstances answer (`run`: its body) made.
fn launched(run: Result<String, DriverError>, machine: &Machine) -> Result<Instance, DriverError> {
    let run: xml::RunInstances = xml::parse(&run?).map_err(|e| {
        DriverError::internal(format!("EC2 RunInstances answer could not be decoded: {e}"))
    })?;
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
        // EC2 refused (not "not now": throttled, a 5xx, no answer): an instance that is
        // already terminated or shutting down is deleted, whatever the refusal was about.
        Err(e) if !not_now(&e) => match ec2.instance_by_id(id) {
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

/// Batch status (contract 0.1.2): the machines of one class and credentials (as the host
/// batches them) looked up as [`status`] would, in few requests: the machines with a
/// providerID with one DescribeInstances per [`query::MAX_FILTER_VALUES`] IDs, the others
/// (and those whose instance is gone) with one per as many names. Requests of another class
/// or credentials are answered one by one.
pub fn statuses<T: Transport>(
    t: &T,
    cfg: &Config,
    reqs: &[MachineRequest],
) -> Vec<Result<GetMachineStatusResponse, DriverError>> {
    let Some(first) = reqs.first() else {
        return Vec::new();
    };
    let id_of = |r: &MachineRequest| {
        decode_provider_id(&r.machine.provider_id)
            .ok()
            .map(|(_, id)| id)
    };
    let looked_up = (|| {
        let spec = spec::parse(&first.machine_class.provider_spec).map_err(invalid)?;
        let ec2 = client(t, cfg, &spec.region, &first.secret)?;
        let ids: Vec<String> = reqs
            .iter()
            .filter(|r| same_batch(first, r))
            .filter_map(id_of)
            .collect();
        let by_id: std::collections::HashMap<String, Instance> =
            find_all_by_id(&ec2, &ids.iter().map(String::as_str).collect::<Vec<_>>())?
                .into_iter()
                .map(|i| (i.instance_id.clone(), i))
                .collect();
        let names: Vec<&str> = reqs
            .iter()
            .filter(|r| same_batch(first, r))
            .filter(|r| !id_of(r).is_some_and(|id| by_id.contains_key(&id)))
            .map(|r| r.machine.name.as_str())
            .collect();
        let by_name = find_all_by_tags(&ec2, &spec, &names)?;
        Ok::<_, DriverError>((spec, by_id, by_name))
    })();
    reqs.iter()
        .map(|req| {
            if !same_batch(first, req) {
                return status(t, cfg, req);
            }
            let (spec, by_id, by_name) = looked_up.as_ref().map_err(Clone::clone)?;
            if let Some(i) = id_of(req).and_then(|id| by_id.get(&id)) {
                return answer_status(spec, std::slice::from_ref(i), &req.machine);
            }
            let mine: Vec<Instance> = by_name
                .iter()
                .filter(|i| i.tag("Name") == Some(req.machine.name.as_str()))
                .cloned()
                .collect();
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
/// terminated with one TerminateInstances (EC2 takes up to 1,000 IDs). If EC2 refuses it (one
/// ID unknown; moto also refuses an instance it already terminated), the batch's instances
/// that are still live are looked up (one DescribeInstances per 200) and terminated with one
/// more TerminateInstances (see [`terminate_all`]). If that is refused too, or for any other
/// machine, each is deleted as by [`delete`]; throttled or unanswered, every machine of the
/// chunk gets that error (Unavailable: retried soon).
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
    let secret = &reqs[by_id
        .iter()
        .position(Option::is_some)
        .expect("one has an ID")]
    .secret;
    let batched: Vec<bool> = reqs
        .iter()
        .zip(&by_id)
        .map(|(r, id)| {
            id.as_ref().is_some_and(|(reg, _)| *reg == region)
                && credentials(&r.secret) == credentials(secret)
        })
        .collect();
    let ids: Vec<&str> = by_id
        .iter()
        .zip(&batched)
        .filter(|(_, b)| **b)
        .filter_map(|(id, _)| id.as_ref().map(|(_, i)| i.as_str()))
        .collect();
    // Each chunk of 1,000 IDs (EC2's limit) and how it ended; each batched ID's chunk.
    let mut ended = Vec::new();
    if regions::is_known(&region)
        && let Ok(ec2) = client(t, cfg, &region, secret)
    {
        ended.extend(ids.chunks(1000).map(|c| terminate_all(&ec2, c)));
    }
    let chunk_of: std::collections::HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i / 1000))
        .collect();
    reqs.iter()
        .zip(by_id.iter().zip(&batched))
        .map(|(req, (id, batched))| {
            let id = id.as_ref().filter(|_| *batched).map(|(_, id)| id.as_str());
            let how = id
                .and_then(|id| chunk_of.get(id))
                .and_then(|c| ended.get(*c));
            match (how, id) {
                (Some(Terminated::All), Some(id)) => Ok(DeleteMachineResponse {
                    last_known_state: format!("EC2 instance {id} terminated"),
                }),
                (Some(Terminated::Later(e)), _) => Err(e.clone()),
                _ => delete(t, cfg, req),
            }
        })
        .collect()
}

/// How a batch's TerminateInstances ended.
#[derive(Debug)]
enum Terminated {
    /// Every instance is terminated (or already was).
    All,
    /// EC2 refused, and the live ones could not be terminated together either: each machine
    /// is deleted on its own.
    OneByOne,
    /// Not now (throttled, 5xx, no answer): every machine of the batch gets this answer and is
    /// tried again soon, instead of each sending requests of its own into the same trouble.
    Later(DriverError),
}

/// Terminate `ids` with one request. Refused by EC2, the ones still live are looked up and
/// terminated with one more, since one machine deleted again (its VM already gone) must not
/// cost every other machine of the batch a lookup and a request of its own.
fn terminate_all<T: Transport>(ec2: &Ec2<T>, ids: &[&str]) -> Terminated {
    match ec2.call(&query::terminate_instances(ids)) {
        Ok(_) => return Terminated::All,
        Err(e) if not_now(&e) => return Terminated::Later(e.into()),
        Err(_refused) => {}
    }
    let live = match find_all_by_id(ec2, ids) {
        Ok(live) => live,
        Err(e) if e.code == Code::Unavailable => return Terminated::Later(e),
        Err(_) => return Terminated::OneByOne,
    };
    let live: Vec<&str> = live.iter().map(|i| i.instance_id.as_str()).collect();
    if live.is_empty() {
        return Terminated::All;
    }
    match ec2.call(&query::terminate_instances(&live)) {
        Ok(_) => Terminated::All,
        Err(e) if not_now(&e) => Terminated::Later(e.into()),
        Err(_refused) => Terminated::OneByOne,
    }
}

/// An answer that says "not now" rather than "no": throttled, a 5xx, or none at all.
fn not_now(e: &crate::ec2::ApiError) -> bool {
    e.aws_code.is_empty() || e.error.code == Code::Unavailable
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
        /// The call's time left (`None`: plenty), less `request_millis` per request sent.
        remaining_millis: std::cell::Cell<Option<u64>>,
        request_millis: u64,
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
            if let Some(left) = self.remaining_millis.get() {
                self.remaining_millis
                    .set(Some(left.saturating_sub(self.request_millis)));
            }
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
        fn remaining_millis(&self) -> u64 {
            self.remaining_millis.get().unwrap_or(u64::MAX)
        }
    }

    /// The request of machine `name` (its own userData), with `provider_id`.
    fn request_of(name: &str, provider_id: &str) -> MachineRequest {
        let mut r = request();
        r.machine.name = name.into();
        r.machine.uid = format!("uid-{name}");
        r.machine.provider_id = provider_id.into();
        for (k, v) in &mut r.secret {
            if k == "userData" {
                *v = format!("#!/bin/sh\necho {name}").into_bytes();
            }
        }
        r
    }

    /// A RunInstances answer for instance `id`.
    fn run_xml(id: &str) -> String {
        instance_xml("RunInstancesResponse", id)
            .replace("<reservationSet><item>", "")
            .replace("</item></reservationSet>", "")
    }

    const IMAGE: &str = "<DescribeImagesResponse><imagesSet><item><imageId>ami-1</imageId><rootDeviceName>/dev/xvda</rootDeviceName></item></imagesSet></DescribeImagesResponse>";

    #[test]
    fn batch_create_looks_up_once_reads_the_ami_once_and_runs_one_instance_per_new_machine() {
        // m1 has its VM already (tagged Name=m1); m2 and m3 get one each.
        let ec2 = Scripted::default()
            .on(
                "DescribeInstances",
                200,
                &instance_xml("DescribeInstancesResponse", "i-0abc"),
            )
            .on("DescribeImages", 200, IMAGE)
            .on("RunInstances", 200, &run_xml("i-2"))
            .on("RunInstances", 200, &run_xml("i-3"));
        let reqs = [
            request_of("m1", ""),
            request_of("m2", ""),
            request_of("m3", ""),
        ];
        let answers = creates(&ec2, &Config::default(), &reqs);
        let ids: Vec<String> = answers
            .iter()
            .map(|a| a.as_ref().unwrap().provider_id.clone())
            .collect();
        assert_eq!(
            ids,
            [
                "aws:///eu-west-1/i-0abc",
                "aws:///eu-west-1/i-2",
                "aws:///eu-west-1/i-3"
            ]
        );
        assert_eq!(
            ec2.actions(),
            [
                "DescribeInstances",
                "DescribeImages",
                "RunInstances",
                "RunInstances"
            ]
        );
        let seen = ec2.seen.borrow();
        // One lookup of the three names; each RunInstances with its machine's own user data
        // and idempotency token.
        for name in ["m1", "m2", "m3"] {
            assert!(seen[0].contains(&format!("={name}&")), "{}", seen[0]);
        }
        for (body, name) in seen[2..].iter().zip(["m2", "m3"]) {
            use base64::Engine as _;
            let user_data =
                base64::engine::general_purpose::STANDARD.encode(format!("#!/bin/sh\necho {name}"));
            let mut encoded = String::new();
            query::encode_into(&user_data, &mut encoded);
            assert!(body.contains(&format!("UserData={encoded}")), "{body}");
            let token = query::client_token("ns", name, &format!("uid-{name}"));
            assert!(body.contains(&format!("ClientToken={token}")), "{body}");
        }
    }

    /// A batch mixing machines that need a RunInstances with one whose own userData is
    /// missing and one whose RunInstances EC2 refuses: each answer is its own machine's.
    #[test]
    fn batch_create_answers_stay_with_their_machines() {
        let ec2 = Scripted::default()
            .on("DescribeInstances", 200, NONE)
            .on("DescribeImages", 200, IMAGE)
            .on("RunInstances", 200, &run_xml("i-1"))
            .on(
                "RunInstances",
                400,
                "<Response><Errors><Error><Code>InsufficientInstanceCapacity</Code><Message>no capacity</Message></Error></Errors></Response>",
            )
            .on("RunInstances", 200, &run_xml("i-4"));
        let mut no_user_data = request_of("m2", "");
        no_user_data.secret.retain(|(k, _)| k != "userData");
        let reqs = [
            no_user_data,
            request_of("m1", ""),
            request_of("m3", ""),
            request_of("m4", ""),
        ];
        let answers = creates(&ec2, &Config::default(), &reqs);
        assert_eq!(answers[0].as_ref().unwrap_err().code, Code::InvalidArgument);
        assert_eq!(
            answers[1].as_ref().unwrap().provider_id,
            "aws:///eu-west-1/i-1"
        );
        let refused = answers[2].as_ref().unwrap_err();
        assert!(
            refused.message.contains("no capacity"),
            "{}",
            refused.message
        );
        assert_eq!(
            answers[3].as_ref().unwrap().provider_id,
            "aws:///eu-west-1/i-4"
        );
        // The lookup was made with the machines whose secret is whole.
        assert_eq!(
            ec2.actions(),
            [
                "DescribeInstances",
                "DescribeImages",
                "RunInstances",
                "RunInstances",
                "RunInstances"
            ]
        );
    }

    #[test]
    fn batch_create_out_of_time_runs_no_instance_and_answers_unavailable() {
        // The lookup takes 600 ms of the 1,000 left: a RunInstances would not fit.
        let ec2 = Scripted {
            remaining_millis: std::cell::Cell::new(Some(1_000)),
            request_millis: 600,
            ..Default::default()
        }
        .on(
            "DescribeInstances",
            200,
            &instance_xml("DescribeInstancesResponse", "i-0abc"),
        );
        let answers = creates(
            &ec2,
            &Config::default(),
            &[request_of("m1", ""), request_of("m2", "")],
        );
        // m1's VM exists: answered; m2 would need a RunInstances: asked again later.
        assert_eq!(
            answers[0].as_ref().unwrap().provider_id,
            "aws:///eu-west-1/i-0abc"
        );
        let e = answers[1].as_ref().unwrap_err();
        assert_eq!(e.code, Code::Unavailable, "{}", e.message);
        assert!(e.message.contains("ran out of time"), "{}", e.message);
        assert_eq!(ec2.actions(), ["DescribeInstances"]);
    }

    #[test]
    fn batch_create_of_a_class_without_its_ami_fails_each_new_machine_alike() {
        let ec2 = Scripted::default().on("DescribeInstances", 200, NONE).on(
            "DescribeImages",
            200,
            "<DescribeImagesResponse><imagesSet/></DescribeImagesResponse>",
        );
        let answers = creates(
            &ec2,
            &Config::default(),
            &[request_of("m1", ""), request_of("m2", "")],
        );
        for a in &answers {
            let e = a.as_ref().unwrap_err();
            assert_eq!(e.code, Code::NotFound, "{}", e.message);
        }
        // The AMI is asked once for the batch.
        assert_eq!(ec2.actions(), ["DescribeInstances", "DescribeImages"]);
    }

    #[test]
    fn batch_status_asks_by_id_first_then_by_name_for_the_rest() {
        // m1's providerID instance is live; m2 has none yet; m3's instance is gone (and no
        // VM is tagged for it): not found.
        let by_id = instance_xml("DescribeInstancesResponse", "i-0abc");
        let ec2 = Scripted::default().on("DescribeInstances", 200, &by_id).on(
            "DescribeInstances",
            200,
            NONE,
        );
        let reqs = [
            request_of("m1", "aws:///eu-west-1/i-0abc"),
            request_of("m2", ""),
            request_of("m3", "aws:///eu-west-1/i-gone"),
        ];
        let answers = statuses(&ec2, &Config::default(), &reqs);
        assert_eq!(
            answers[0].as_ref().unwrap().provider_id,
            "aws:///eu-west-1/i-0abc"
        );
        assert_eq!(answers[1].as_ref().unwrap_err().code, Code::NotFound);
        assert_eq!(answers[2].as_ref().unwrap_err().code, Code::NotFound);
        let seen = ec2.seen.borrow();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[0].contains("Filter.1.Name=instance-id"), "{}", seen[0]);
        assert!(
            seen[0].contains("=i-0abc&") && seen[0].contains("=i-gone&"),
            "{}",
            seen[0]
        );
        assert!(seen[1].contains("Filter.1.Name=tag%3AName"), "{}", seen[1]);
        assert!(!seen[1].contains("=m1&") && seen[1].contains("=m2&") && seen[1].contains("=m3&"));
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

    /// One machine of a batch deleted again (its VM already terminated): EC2 (here, moto's
    /// answer) refuses the batch's TerminateInstances; the live ones are looked up once and
    /// terminated with one more request, not with a lookup and a request per machine.
    #[test]
    fn batch_delete_refused_for_one_gone_vm_terminates_the_live_ones_in_one_more_request() {
        let refused = "<Response><Errors><Error><Code>InvalidNetworkInterfaceID.NotFound</Code><Message>x</Message></Error></Errors></Response>";
        // i-1 is gone; i-2 and i-3 are live.
        let live = instance_xml("DescribeInstancesResponse", "i-2").replace(
            "</instancesSet>",
            &format!(
                "{}</instancesSet>",
                instance_xml("X", "i-3")
                    .split("<instancesSet>")
                    .nth(1)
                    .unwrap()
                    .split("</instancesSet>")
                    .next()
                    .unwrap()
            ),
        );
        let ec2 = Scripted::default()
            .on("TerminateInstances", 400, refused)
            .on("DescribeInstances", 200, &live)
            .on("TerminateInstances", 200, "<TerminateInstancesResponse/>");
        let reqs = [
            request_of("m1", "aws:///eu-west-1/i-1"),
            request_of("m2", "aws:///eu-west-1/i-2"),
            request_of("m3", "aws:///eu-west-1/i-3"),
        ];
        let answers = deletes(&ec2, &Config::default(), &reqs);
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_eq!(
            ec2.actions(),
            [
                "TerminateInstances",
                "DescribeInstances",
                "TerminateInstances"
            ]
        );
        let seen = ec2.seen.borrow();
        assert!(seen[1].contains("Filter.1.Name=instance-id"), "{}", seen[1]);
        assert!(
            seen[2].contains("InstanceId.1=i-2") && seen[2].contains("InstanceId.2=i-3"),
            "{}",
            seen[2]
        );
        assert!(!seen[2].contains("i-1"), "{}", seen[2]);
        // Refused again: each machine is deleted on its own, as before.
        let ec2 = Scripted::default()
            .on("TerminateInstances", 400, refused)
            .on("DescribeInstances", 200, &live)
            .on("TerminateInstances", 400, refused)
            .on("TerminateInstances", 200, "<TerminateInstancesResponse/>");
        let answers = deletes(&ec2, &Config::default(), &reqs[1..2]);
        assert!(answers[0].is_ok(), "{answers:?}");
    }

    /// Throttled (after the host's own attempts) or unanswered: every machine of the batch is
    /// answered Unavailable from that one request, none sends requests of its own.
    #[test]
    fn batch_delete_throttled_answers_every_machine_unavailable_with_one_request() {
        let throttled = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>slow down</Message></Error></Errors></Response>";
        let ec2 = Scripted::default().on("TerminateInstances", 503, throttled);
        let reqs = [
            request_of("m1", "aws:///eu-west-1/i-1"),
            request_of("m2", "aws:///eu-west-1/i-2"),
        ];
        let answers = deletes(&ec2, &Config::default(), &reqs);
        for a in &answers {
            assert_eq!(
                a.as_ref().unwrap_err().code,
                Code::Unavailable,
                "{answers:?}"
            );
        }
        assert_eq!(ec2.actions(), ["TerminateInstances"]);
    }

    /// Throttled is "not now", not a refusal: no lookup follows into the same throttling.
    #[test]
    fn terminate_throttled_is_unavailable_without_a_lookup() {
        let throttled = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>slow down</Message></Error></Errors></Response>";
        let ec2 = Scripted::default().on("TerminateInstances", 503, throttled);
        let mut req = request();
        req.machine.provider_id = "aws:///eu-west-1/i-0abc".into();
        assert_eq!(
            delete(&ec2, &Config::default(), &req).unwrap_err().code,
            Code::Unavailable
        );
        assert_eq!(ec2.actions(), ["TerminateInstances"]);
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

//! The host-side driver interface: one request/response pair per operation, the
//! [`MachineDriver`] trait (implemented by the sandboxed provider, and by fakes in tests), and
//! [`ProviderLookup`] (implemented by the registry).

use std::sync::Arc;

use crate::*;

/// One driver call's request. Borrowed: a call never needs to own what the caller built.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    CreateMachine(&'a MachineRequest),
    InitializeMachine(&'a MachineRequest),
    DeleteMachine(&'a MachineRequest),
    GetMachineStatus(&'a MachineRequest),
    ListMachines(&'a ClassRequest),
    GetVolumeIds(&'a GetVolumeIdsRequest),
    ValidateMachineClass(&'a ClassRequest),
    MetricsLabels(&'a MetricsLabelsRequest),
}

/// One driver call's answer, in the variant of its request.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Response {
    CreateMachine(CreateMachineResponse),
    InitializeMachine(InitializeMachineResponse),
    DeleteMachine(DeleteMachineResponse),
    GetMachineStatus(GetMachineStatusResponse),
    ListMachines(ListMachinesResponse),
    GetVolumeIds(GetVolumeIdsResponse),
    ValidateMachineClass,
    MetricsLabels(Vec<(String, String)>),
}

impl Request<'_> {
    pub fn operation(&self) -> Operation {
        match self {
            Request::CreateMachine(_) => Operation::CreateMachine,
            Request::InitializeMachine(_) => Operation::InitializeMachine,
            Request::DeleteMachine(_) => Operation::DeleteMachine,
            Request::GetMachineStatus(_) => Operation::GetMachineStatus,
            Request::ListMachines(_) => Operation::ListMachines,
            Request::GetVolumeIds(_) => Operation::GetVolumeIds,
            Request::ValidateMachineClass(_) => Operation::ValidateMachineClass,
            Request::MetricsLabels(_) => Operation::MetricsLabels,
        }
    }

    /// The machine the call is about (empty for class-wide operations), for logs.
    pub fn machine_name(&self) -> &str {
        match self {
            Request::CreateMachine(r)
            | Request::InitializeMachine(r)
            | Request::DeleteMachine(r)
            | Request::GetMachineStatus(r) => &r.machine.name,
            Request::MetricsLabels(r) => &r.machine.name,
            Request::ListMachines(_)
            | Request::GetVolumeIds(_)
            | Request::ValidateMachineClass(_) => "",
        }
    }

    /// The class's merged secret, for the operations that carry one.
    pub fn secret(&self) -> Option<&SecretData> {
        match self {
            Request::CreateMachine(r)
            | Request::InitializeMachine(r)
            | Request::DeleteMachine(r)
            | Request::GetMachineStatus(r) => Some(&r.secret),
            Request::ListMachines(r) | Request::ValidateMachineClass(r) => Some(&r.secret),
            Request::GetVolumeIds(_) | Request::MetricsLabels(_) => None,
        }
    }
}

impl Response {
    /// The JSON a caller of `mcm-wasm call` sees (validate answers `{}`, metrics-labels an
    /// object of labels).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Response::ValidateMachineClass => serde_json::json!({}),
            Response::MetricsLabels(labels) => serde_json::Value::Object(
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            ),
            other => serde_json::to_value(other).expect("driver types serialize"),
        }
    }
}

/// Requests parsed from JSON, owned (for the CLI and conformance).
#[derive(Clone, Debug)]
pub enum OwnedRequest {
    Machine(Operation, MachineRequest),
    Class(Operation, ClassRequest),
    Volumes(GetVolumeIdsRequest),
    Labels(MetricsLabelsRequest),
}

/// A JSON request that does not parse as the operation's request type.
#[derive(Debug, thiserror::Error)]
#[error("malformed request JSON for {operation}: {source}")]
pub struct BadRequest {
    pub operation: Operation,
    #[source]
    pub source: serde_json::Error,
}

impl OwnedRequest {
    /// Parse `json` as `op`'s request; `secret` goes into the operations that carry one.
    pub fn from_json(op: Operation, json: &str, secret: &SecretData) -> Result<Self, BadRequest> {
        let bad = |source| BadRequest {
            operation: op,
            source,
        };
        Ok(match op {
            Operation::CreateMachine
            | Operation::InitializeMachine
            | Operation::DeleteMachine
            | Operation::GetMachineStatus => {
                let mut req: MachineRequest = serde_json::from_str(json).map_err(bad)?;
                req.secret = secret.clone();
                OwnedRequest::Machine(op, req)
            }
            Operation::ListMachines | Operation::ValidateMachineClass => {
                let mut req: ClassRequest = serde_json::from_str(json).map_err(bad)?;
                req.secret = secret.clone();
                OwnedRequest::Class(op, req)
            }
            Operation::GetVolumeIds => {
                OwnedRequest::Volumes(serde_json::from_str(json).map_err(bad)?)
            }
            Operation::MetricsLabels => {
                OwnedRequest::Labels(serde_json::from_str(json).map_err(bad)?)
            }
        })
    }

    pub fn as_request(&self) -> Request<'_> {
        match self {
            OwnedRequest::Machine(Operation::CreateMachine, r) => Request::CreateMachine(r),
            OwnedRequest::Machine(Operation::InitializeMachine, r) => Request::InitializeMachine(r),
            OwnedRequest::Machine(Operation::DeleteMachine, r) => Request::DeleteMachine(r),
            OwnedRequest::Machine(_, r) => Request::GetMachineStatus(r),
            OwnedRequest::Class(Operation::ListMachines, r) => Request::ListMachines(r),
            OwnedRequest::Class(_, r) => Request::ValidateMachineClass(r),
            OwnedRequest::Volumes(r) => Request::GetVolumeIds(r),
            OwnedRequest::Labels(r) => Request::MetricsLabels(r),
        }
    }
}

/// The typed methods are one generic unwrapping of [`MachineDriver::call`]'s answer.
macro_rules! typed {
    ($self:ident, $variant:ident, $req:expr) => {
        match $self.call(Request::$variant($req)).await? {
            Response::$variant(answer) => Ok(answer),
            other => Err(mismatch(Operation::$variant, &other)),
        }
    };
}

fn mismatch(op: Operation, answer: &Response) -> DriverError {
    DriverError::new(
        Code::Internal,
        format!("driver answered {op} with the response of another operation: {answer:?}"),
    )
}

/// What the controller calls: the eight driver operations over the host's types. Implement
/// [`MachineDriver::call`]; the typed methods are provided.
#[async_trait::async_trait]
pub trait MachineDriver: Send + Sync {
    /// The provider's name (metrics and log label).
    fn name(&self) -> &str;

    /// The provider's version.
    fn version(&self) -> &str;

    /// One driver call.
    async fn call(&self, request: Request<'_>) -> Result<Response, DriverError>;

    async fn create_machine(
        &self,
        req: &MachineRequest,
    ) -> Result<CreateMachineResponse, DriverError> {
        typed!(self, CreateMachine, req)
    }

    async fn initialize_machine(
        &self,
        req: &MachineRequest,
    ) -> Result<InitializeMachineResponse, DriverError> {
        typed!(self, InitializeMachine, req)
    }

    async fn delete_machine(
        &self,
        req: &MachineRequest,
    ) -> Result<DeleteMachineResponse, DriverError> {
        typed!(self, DeleteMachine, req)
    }

    async fn get_machine_status(
        &self,
        req: &MachineRequest,
    ) -> Result<GetMachineStatusResponse, DriverError> {
        typed!(self, GetMachineStatus, req)
    }

    /// Does the provider serve [`MachineDriver::get_machine_statuses`] and
    /// [`MachineDriver::delete_machines`] in one call (contract 0.1.2's `batch` interface)?
    /// When not, batching callers call one machine at a time.
    fn batches(&self) -> bool {
        false
    }

    /// The status of each machine, one answer per request in order (batch providers: one
    /// call; others: one call per machine).
    async fn get_machine_statuses(
        &self,
        reqs: &[MachineRequest],
    ) -> Vec<Result<GetMachineStatusResponse, DriverError>> {
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            out.push(self.get_machine_status(req).await);
        }
        out
    }

    /// Does the provider serve [`MachineDriver::create_machines`] in one call (contract
    /// 0.1.3's `batch-create` interface)? When not, batching callers create one at a time.
    fn batches_creates(&self) -> bool {
        false
    }

    /// Create each machine's VM, one answer per request in order; each request keeps its own
    /// secret (its own `userData`). See [`MachineDriver::get_machine_statuses`].
    async fn create_machines(
        &self,
        reqs: &[MachineRequest],
    ) -> Vec<Result<CreateMachineResponse, DriverError>> {
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            out.push(self.create_machine(req).await);
        }
        out
    }

    /// Delete each machine's VM, one answer per request in order (see
    /// [`MachineDriver::get_machine_statuses`]).
    async fn delete_machines(
        &self,
        reqs: &[MachineRequest],
    ) -> Vec<Result<DeleteMachineResponse, DriverError>> {
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            out.push(self.delete_machine(req).await);
        }
        out
    }

    async fn list_machines(&self, req: &ClassRequest) -> Result<ListMachinesResponse, DriverError> {
        typed!(self, ListMachines, req)
    }

    async fn get_volume_ids(
        &self,
        req: &GetVolumeIdsRequest,
    ) -> Result<GetVolumeIdsResponse, DriverError> {
        typed!(self, GetVolumeIds, req)
    }

    async fn validate_machine_class(&self, req: &ClassRequest) -> Result<(), DriverError> {
        match self.call(Request::ValidateMachineClass(req)).await? {
            Response::ValidateMachineClass => Ok(()),
            other => Err(mismatch(Operation::ValidateMachineClass, &other)),
        }
    }

    async fn metrics_labels(
        &self,
        req: &MetricsLabelsRequest,
    ) -> Result<Vec<(String, String)>, DriverError> {
        typed!(self, MetricsLabels, req)
    }
}

/// A provider was loaded or replaced, or why it is not ready changed: machines waiting for it
/// are worth another look.
#[derive(Clone, Debug)]
pub struct ProviderLoaded {
    pub name: String,
}

/// Providers by the name a MachineClass's `provider` field uses.
pub trait ProviderLookup: Send + Sync {
    /// The provider serving `name` (its own name or an alias), if one is loaded.
    fn get(&self, name: &str) -> Option<Arc<dyn MachineDriver>>;

    /// Every name served (own names and aliases), sorted, for messages.
    fn served_names(&self) -> Vec<String>;

    /// Why nothing serves `name` although something (a `Provider` resource) claims it; `None`
    /// when a provider serves it or nothing claims it.
    fn not_ready(&self, _name: &str) -> Option<String> {
        None
    }

    /// Notified whenever a provider is loaded or replaced.
    fn subscribe_loaded(&self) -> tokio::sync::broadcast::Receiver<ProviderLoaded>;

    /// The figures of the client-side rate buckets the providers' cloud requests go through
    /// (for metrics); empty where nothing limits them.
    fn rate_buckets(&self) -> Vec<RateBucketStats> {
        Vec::new()
    }
}

/// One client-side rate bucket: which requests it meters and what it did.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RateBucketStats {
    /// A short fingerprint of the credential (never the credential).
    pub credential: String,
    /// The endpoint's host (and port).
    pub host: String,
    /// The rate class the provider named (for EC2, the action); `""`: none.
    pub class: String,
    /// The current fill rate (requests per second); `None` while it does not limit.
    pub rate: Option<f64>,
    /// Requests that took a token.
    pub requests: u64,
    /// Throttling answers from the cloud.
    pub throttled: u64,
    /// Total time requests waited for tokens.
    pub waited: std::time::Duration,
    /// Calls that gave up because their token would have come after their deadline.
    pub rate_limited: u64,
}

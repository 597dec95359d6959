//! Coalescing of driver calls, after Karpenter's `pkg/batcher`: the GetMachineStatus,
//! CreateMachine and DeleteMachine calls of machines that share a provider, a class and
//! credentials, made by concurrent reconciles within a short window, become one batch call of
//! the provider's `mcm:driver/batch` interface (contract 0.1.2) or `batch-create` (0.1.3);
//! each reconcile gets its own machine's answer back, and one machine's error never fails the
//! others.
//!
//! A window closes when no request came for `idle`, after `max_wait` at the latest, or at
//! `max_items` requests (a creation window: at `max_creates` or after `max_wait`). A provider without the batch interface (`MachineDriver::batches`,
//! `MachineDriver::batches_creates`) is called directly, machine by machine, without waiting.
//!
//! Deliberate deviations from single calls: the status and delete requests of one batch share
//! one secret (the first request's; their credentials are the same by the batch key, only
//! `userData` may differ, which neither status nor delete reads; a creation keeps its own),
//! and warnings a provider logs during a batch call are logged, not turned into events on
//! each machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcm_driver::{
    Code, CreateMachineResponse, DeleteMachineResponse, DriverError, GetMachineStatusResponse,
    MachineDriver, MachineRequest,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{Notify, oneshot};

use crate::metrics::BatchLabels;

/// When a batch window closes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchConfig {
    /// Close after this long without a new request (`--batch-idle`).
    pub idle: Duration,
    /// Close this long after the first request at the latest (`--batch-max-wait`).
    pub max_wait: Duration,
    /// Close at this many requests (`--batch-max-size`; 1 turns batching off).
    pub max_items: usize,
    /// Close a CreateMachine window at this many requests (`--batch-max-creates`): a
    /// batch's creations (e.g. one EC2 RunInstances per machine, each waiting for its rate
    /// limit's token) must fit in one call's deadline.
    pub max_creates: usize,
}

impl BatchConfig {
    /// The size and idle time of a window of `kind`: a creation window stays open until it is
    /// full or `max_wait` has passed (a VM takes minutes to boot, so a second's wait costs
    /// little, and every batch is one more lookup).
    fn window(&self, kind: Kind) -> (usize, Duration) {
        match kind {
            Kind::Create => (self.max_items.min(self.max_creates), self.max_wait),
            Kind::Status | Kind::Delete => (self.max_items, self.idle),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            idle: Duration::from_millis(100),
            max_wait: Duration::from_secs(1),
            max_items: 500,
            max_creates: 50,
        }
    }
}

/// What a batch does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Status,
    Create,
    Delete,
}

impl Kind {
    fn operation(self) -> &'static str {
        match self {
            Kind::Status => "GetMachineStatus",
            Kind::Create => "CreateMachine",
            Kind::Delete => "DeleteMachine",
        }
    }
}

/// One answer of any kind.
enum Answer {
    Status(Result<GetMachineStatusResponse, DriverError>),
    Create(Result<CreateMachineResponse, DriverError>),
    Delete(Result<DeleteMachineResponse, DriverError>),
}

/// Which requests may share a batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: Kind,
    provider: String,
    class: String,
    /// The secret's credential ([`mcm_driver::credential_fingerprint`]).
    credentials: String,
}

struct Pending {
    req: MachineRequest,
    answer: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    items: Mutex<Vec<Pending>>,
    arrived: Notify,
}

/// The open batches of the controller.
pub struct Batcher {
    config: BatchConfig,
    queues: Arc<Mutex<HashMap<Key, Arc<Queue>>>>,
    batches: Family<BatchLabels, Counter>,
    machines: Family<BatchLabels, Counter>,
}

impl Batcher {
    /// `batches` and `machines` count batch calls and the machines they served.
    pub fn new(
        config: BatchConfig,
        batches: Family<BatchLabels, Counter>,
        machines: Family<BatchLabels, Counter>,
    ) -> Batcher {
        Batcher {
            config,
            queues: Default::default(),
            batches,
            machines,
        }
    }

    /// The machine's status, through a batch when the provider batches.
    pub async fn get_machine_status(
        &self,
        provider: &Arc<dyn MachineDriver>,
        req: MachineRequest,
    ) -> Result<GetMachineStatusResponse, DriverError> {
        if !self.batching(provider) {
            return provider.get_machine_status(&req).await;
        }
        match self.submit(Kind::Status, provider, req).await? {
            Answer::Status(a) => a,
            _ => unreachable!("a status batch answers statuses"),
        }
    }

    /// Create the machine's VM, through a batch when the provider batches creations.
    pub async fn create_machine(
        &self,
        provider: &Arc<dyn MachineDriver>,
        req: MachineRequest,
    ) -> Result<CreateMachineResponse, DriverError> {
        if !self.batches_creates(provider) {
            return provider.create_machine(&req).await;
        }
        match self.submit(Kind::Create, provider, req).await? {
            Answer::Create(a) => a,
            _ => unreachable!("a create batch answers creations"),
        }
    }

    /// Delete the machine's VM, through a batch when the provider batches.
    pub async fn delete_machine(
        &self,
        provider: &Arc<dyn MachineDriver>,
        req: MachineRequest,
    ) -> Result<DeleteMachineResponse, DriverError> {
        if !self.batching(provider) {
            return provider.delete_machine(&req).await;
        }
        match self.submit(Kind::Delete, provider, req).await? {
            Answer::Delete(a) => a,
            _ => unreachable!("a delete batch answers deletes"),
        }
    }

    /// Are the provider's creations batched (contract 0.1.3's `batch-create`, batching on)?
    pub fn batches_creates(&self, provider: &Arc<dyn MachineDriver>) -> bool {
        self.config.window(Kind::Create).0 > 1 && provider.batches_creates()
    }

    fn batching(&self, provider: &Arc<dyn MachineDriver>) -> bool {
        self.config.window(Kind::Status).0 > 1 && provider.batches()
    }

    async fn submit(
        &self,
        kind: Kind,
        provider: &Arc<dyn MachineDriver>,
        req: MachineRequest,
    ) -> Result<Answer, DriverError> {
        let key = Key {
            kind,
            provider: provider.name().to_string(),
            class: req.machine_class.name.clone(),
            credentials: mcm_driver::credential_fingerprint(&req.secret),
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut queues = self.queues.lock().expect("batcher lock");
            let queue = match queues.get(&key) {
                Some(q) => q.clone(),
                None => {
                    let q = Arc::new(Queue::default());
                    queues.insert(key.clone(), q.clone());
                    tokio::spawn(flush(
                        key.clone(),
                        q.clone(),
                        provider.clone(),
                        self.config,
                        self.queues.clone(),
                        (self.batches.clone(), self.machines.clone()),
                    ));
                    q
                }
            };
            queue
                .items
                .lock()
                .expect("queue lock")
                .push(Pending { req, answer: tx });
            queue.arrived.notify_one();
        }
        rx.await.map_err(|_| {
            DriverError::new(
                Code::Internal,
                format!("the {} batch ended without an answer", kind.operation()),
            )
        })
    }
}

/// The queue's flusher: close windows and send batches until the queue stays empty.
async fn flush(
    key: Key,
    queue: Arc<Queue>,
    provider: Arc<dyn MachineDriver>,
    config: BatchConfig,
    queues: Arc<Mutex<HashMap<Key, Arc<Queue>>>>,
    (batches, machines): (Family<BatchLabels, Counter>, Family<BatchLabels, Counter>),
) {
    // However this task ends (a provider that panics included), its queue stops taking
    // requests: the next request of the key opens a new queue with a flusher of its own, and
    // the requests left here get an error instead of waiting forever.
    let _retire = Retire {
        key: key.clone(),
        queue: queue.clone(),
        queues: queues.clone(),
    };
    let (max_items, idle) = config.window(key.kind);
    loop {
        let opened = tokio::time::Instant::now();
        loop {
            if queue.items.lock().expect("queue lock").len() >= max_items {
                break;
            }
            let left = config.max_wait.saturating_sub(opened.elapsed());
            if left.is_zero()
                || tokio::time::timeout(idle.min(left), queue.arrived.notified())
                    .await
                    .is_err()
            {
                break;
            }
        }
        let taken: Vec<Pending> = {
            // Under the map's lock: a request either joins this batch or finds no queue and
            // starts the next one.
            let mut map = queues.lock().expect("batcher lock");
            let mut items = queue.items.lock().expect("queue lock");
            let n = items.len().min(max_items);
            let taken: Vec<Pending> = items.drain(..n).collect();
            if items.is_empty() && is_current(&map, &key, &queue) {
                map.remove(&key);
            }
            taken
        };
        if taken.is_empty() {
            return;
        }
        let labels = BatchLabels {
            provider: key.provider.clone(),
            operation: key.kind.operation(),
        };
        batches.get_or_create(&labels).inc();
        machines.get_or_create(&labels).inc_by(taken.len() as u64);
        let secret = taken[0].req.secret.clone();
        let (reqs, senders): (Vec<MachineRequest>, Vec<_>) = taken
            .into_iter()
            .map(|p| {
                let mut req = p.req;
                if key.kind != Kind::Create {
                    req.secret = secret.clone();
                }
                (req, p.answer)
            })
            .unzip();
        tracing::debug!(provider = %key.provider, class = %key.class, operation = key.kind.operation(), machines = reqs.len(), "batch call");
        let answers: Vec<Answer> = match key.kind {
            Kind::Status => provider
                .get_machine_statuses(&reqs)
                .await
                .into_iter()
                .map(Answer::Status)
                .collect(),
            Kind::Create => provider
                .create_machines(&reqs)
                .await
                .into_iter()
                .map(Answer::Create)
                .collect(),
            Kind::Delete => provider
                .delete_machines(&reqs)
                .await
                .into_iter()
                .map(Answer::Delete)
                .collect(),
        };
        for (sender, answer) in senders.into_iter().zip(answers) {
            // A reconcile that stopped waiting (its controller run ended) needs no answer.
            let _ = sender.send(answer);
        }
        // Requests left behind the window (more than max_items): the next window.
        if !is_current(&queues.lock().expect("batcher lock"), &key, &queue) {
            return;
        }
    }
}

/// Removes a flusher's queue from the map when the flusher ends, if it is still there.
struct Retire {
    key: Key,
    queue: Arc<Queue>,
    queues: Arc<Mutex<HashMap<Key, Arc<Queue>>>>,
}

impl Drop for Retire {
    fn drop(&mut self) {
        let Ok(mut map) = self.queues.lock() else {
            return;
        };
        if is_current(&map, &self.key, &self.queue) {
            map.remove(&self.key);
        }
        if let Ok(mut items) = self.queue.items.lock() {
            // Their senders drop: the waiting reconciles get an error and retry.
            items.clear();
        }
    }
}

/// Is `queue` the one requests of `key` join now?
fn is_current(map: &HashMap<Key, Arc<Queue>>, key: &Key, queue: &Arc<Queue>) -> bool {
    map.get(key).is_some_and(|q| Arc::ptr_eq(q, queue))
}

#[cfg(test)]
mod tests {
    //! A fake provider (a pure decision test of the windows and the fan-out; the real
    //! sandbox and moto are in the controller's end-to-end tests).
    use super::*;
    use mcm_driver::{Request, Response};

    /// Answers each machine's status with its own name as node name (`m3`: not found), and
    /// records the size of every batch and every single call.
    #[derive(Default)]
    struct Echo {
        batching: bool,
        batches: Mutex<Vec<usize>>,
        singles: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl MachineDriver for Echo {
        fn name(&self) -> &str {
            "echo"
        }
        fn version(&self) -> &str {
            "0"
        }
        async fn call(&self, request: Request<'_>) -> Result<Response, DriverError> {
            let name = request.machine_name().to_string();
            self.singles.lock().unwrap().push(name.clone());
            match request {
                Request::GetMachineStatus(_) if name == "m3" => {
                    Err(DriverError::new(Code::NotFound, "no VM"))
                }
                Request::GetMachineStatus(_) => {
                    Ok(Response::GetMachineStatus(GetMachineStatusResponse {
                        node_name: name,
                        ..Default::default()
                    }))
                }
                Request::CreateMachine(_) => Ok(Response::CreateMachine(Default::default())),
                _ => Ok(Response::DeleteMachine(Default::default())),
            }
        }
        fn batches(&self) -> bool {
            self.batching
        }
        async fn get_machine_statuses(
            &self,
            reqs: &[MachineRequest],
        ) -> Vec<Result<GetMachineStatusResponse, DriverError>> {
            self.batches.lock().unwrap().push(reqs.len());
            let mut out = Vec::new();
            for r in reqs {
                assert_eq!(r.secret, reqs[0].secret, "one secret per batch");
                out.push(self.get_machine_status(r).await);
            }
            self.singles.lock().unwrap().clear();
            out
        }
        async fn delete_machines(
            &self,
            reqs: &[MachineRequest],
        ) -> Vec<Result<DeleteMachineResponse, DriverError>> {
            self.batches.lock().unwrap().push(reqs.len());
            reqs.iter().map(|_| Ok(Default::default())).collect()
        }
        fn batches_creates(&self) -> bool {
            self.batching
        }
        /// The providerID is the machine's own userData: a batch must not share one secret.
        async fn create_machines(
            &self,
            reqs: &[MachineRequest],
        ) -> Vec<Result<mcm_driver::CreateMachineResponse, DriverError>> {
            self.batches.lock().unwrap().push(reqs.len());
            reqs.iter()
                .map(|r| {
                    Ok(mcm_driver::CreateMachineResponse {
                        provider_id: String::from_utf8(r.secret["userData"].clone()).unwrap(),
                        ..Default::default()
                    })
                })
                .collect()
        }
    }

    fn request(name: &str, user_data: &str) -> MachineRequest {
        let mut req = MachineRequest::default();
        req.machine.name = name.into();
        req.machine_class.name = "c1".into();
        req.secret
            .insert("providerAccessKeyId".into(), b"AKIA".to_vec());
        req.secret
            .insert("userData".into(), user_data.as_bytes().to_vec());
        req
    }

    fn batcher(config: BatchConfig) -> Arc<Batcher> {
        Arc::new(Batcher::new(config, Family::default(), Family::default()))
    }

    /// Concurrent status calls of one class and credentials (their userData differs) become
    /// one batch call; each caller gets its own machine's answer, errors included.
    #[tokio::test]
    async fn concurrent_calls_become_one_batch_and_fan_back_out() {
        let echo = Arc::new(Echo {
            batching: true,
            ..Default::default()
        });
        let provider: Arc<dyn MachineDriver> = echo.clone();
        let b = batcher(BatchConfig::default());
        let calls = (0..5).map(|i| {
            let (b, provider) = (b.clone(), provider.clone());
            async move {
                b.get_machine_status(&provider, request(&format!("m{i}"), &format!("#m{i}")))
                    .await
            }
        });
        let answers = futures::future::join_all(calls).await;
        assert_eq!(*echo.batches.lock().unwrap(), vec![5], "one batch of five");
        for (i, a) in answers.iter().enumerate() {
            if i == 3 {
                assert_eq!(a.as_ref().unwrap_err().code, Code::NotFound);
            } else {
                assert_eq!(
                    a.as_ref().unwrap().node_name,
                    format!("m{i}"),
                    "its own answer"
                );
            }
        }
        // The window closed and its queue is gone: the next call opens a new one.
        b.get_machine_status(&provider, request("m9", "#"))
            .await
            .unwrap();
        assert_eq!(*echo.batches.lock().unwrap(), vec![5, 1]);
    }

    /// Concurrent creations become one batch call in which each machine keeps its own
    /// userData (its bootstrap token and name are in it).
    #[tokio::test]
    async fn creations_batch_with_each_machine_s_own_user_data() {
        let echo = Arc::new(Echo {
            batching: true,
            ..Default::default()
        });
        let provider: Arc<dyn MachineDriver> = echo.clone();
        let b = batcher(BatchConfig::default());
        let calls = (0..4).map(|i| {
            let (b, provider) = (b.clone(), provider.clone());
            async move {
                b.create_machine(&provider, request(&format!("m{i}"), &format!("#m{i}")))
                    .await
            }
        });
        let answers = futures::future::join_all(calls).await;
        assert_eq!(*echo.batches.lock().unwrap(), vec![4], "one batch of four");
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(a.as_ref().unwrap().provider_id, format!("#m{i}"));
        }
        // Without the batch export (or with batching off): one call per machine, at once.
        let single = Arc::new(Echo::default());
        let provider: Arc<dyn MachineDriver> = single.clone();
        b.create_machine(&provider, request("m7", "#m7"))
            .await
            .unwrap();
        assert!(single.batches.lock().unwrap().is_empty());
        assert_eq!(*single.singles.lock().unwrap(), ["m7"]);
    }

    /// A provider that panics in a batch call fails that batch's callers, not the key: the
    /// next call of the same key opens a new batch.
    #[tokio::test]
    async fn a_panicking_batch_fails_its_callers_and_the_next_batch_still_runs() {
        struct Panics(std::sync::atomic::AtomicBool);
        #[async_trait::async_trait]
        impl MachineDriver for Panics {
            fn name(&self) -> &str {
                "panics"
            }
            fn version(&self) -> &str {
                "0"
            }
            async fn call(&self, _: Request<'_>) -> Result<Response, DriverError> {
                Ok(Response::GetMachineStatus(Default::default()))
            }
            fn batches(&self) -> bool {
                true
            }
            async fn get_machine_statuses(
                &self,
                reqs: &[MachineRequest],
            ) -> Vec<Result<GetMachineStatusResponse, DriverError>> {
                if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    panic!("first batch panics");
                }
                reqs.iter().map(|_| Ok(Default::default())).collect()
            }
        }
        let provider: Arc<dyn MachineDriver> =
            Arc::new(Panics(std::sync::atomic::AtomicBool::new(false)));
        // Windows of two: m3 is still queued behind the batch of m1 and m2 when it panics.
        let b = batcher(BatchConfig {
            max_items: 2,
            ..Default::default()
        });
        let calls = ["m1", "m2", "m3"].map(|name| {
            let (b, provider) = (b.clone(), provider.clone());
            async move { b.get_machine_status(&provider, request(name, "#")).await }
        });
        let answers =
            tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(calls))
                .await
                .expect("a request queued behind a panicking batch must not wait forever");
        for a in &answers {
            assert_eq!(
                a.as_ref().map_err(|e| e.code).err(),
                Some(Code::Internal),
                "{answers:?}"
            );
        }
        b.get_machine_status(&provider, request("m4", "#"))
            .await
            .unwrap();
    }

    /// A window closes at `max_items`; other credentials never share a batch; a provider
    /// without the batch interface is called machine by machine, at once.
    #[tokio::test]
    async fn batches_are_bounded_keyed_and_only_for_batching_providers() {
        let echo = Arc::new(Echo {
            batching: true,
            ..Default::default()
        });
        let provider: Arc<dyn MachineDriver> = echo.clone();
        let b = batcher(BatchConfig {
            max_items: 3,
            ..Default::default()
        });
        let calls = (0..7).map(|i| {
            let (b, provider) = (b.clone(), provider.clone());
            let mut req = request(&format!("m{i}"), "#");
            if i == 6 {
                req.secret
                    .insert("providerAccessKeyId".into(), b"OTHER".to_vec());
            }
            async move { b.delete_machine(&provider, req).await }
        });
        let answers = futures::future::join_all(calls).await;
        assert!(answers.iter().all(Result::is_ok));
        let mut sizes = echo.batches.lock().unwrap().clone();
        sizes.sort();
        assert_eq!(
            sizes,
            vec![1, 3, 3],
            "six of one key in windows of three, one alone"
        );

        let single = Arc::new(Echo::default());
        let provider: Arc<dyn MachineDriver> = single.clone();
        let started = std::time::Instant::now();
        b.get_machine_status(&provider, request("m1", "#"))
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(90),
            "no window for a provider that does not batch"
        );
        assert!(single.batches.lock().unwrap().is_empty());
        assert_eq!(*single.singles.lock().unwrap(), vec!["m1".to_string()]);
    }
}

//! moto (a real EC2 Query API server) for the AWS provider's tests and benchmarks: testenv's
//! launcher, a fault-injecting loopback proxy between the runtime and moto, and readers of
//! moto's state (direct EC2 calls, unsigned: moto accepts anything).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use crate::moto::{ACCESS_KEY, REGION, SECRET_KEY};

pub const INSTANCE_PROFILE: &str = "shoot--a-nodes";

/// moto (testenv's launcher: it dies with the test process), with readers of its state.
pub struct Moto {
    pub addr: SocketAddr,
    pub endpoint: String,
    server: crate::moto::Moto,
}

impl Moto {
    pub fn start() -> Moto {
        let server = crate::moto::Moto::start().unwrap_or_else(|e| panic!("{e}"));
        Moto {
            addr: server.addr,
            endpoint: server.endpoint.clone(),
            server,
        }
    }

    /// moto's process id.
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// One EC2 action against moto directly (not through the provider), in `region`.
    pub async fn ec2(&self, region: &str, action: &str, params: &[(&str, &str)]) -> roxml::Doc {
        self.query("ec2", "2016-11-15", region, action, params)
            .await
    }

    /// One AWS Query API action of `service` against moto.
    pub async fn query(
        &self,
        service: &str,
        version: &str,
        region: &str,
        action: &str,
        params: &[(&str, &str)],
    ) -> roxml::Doc {
        let text = self
            .server
            .query(service, version, region, action, params)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        roxml::Doc(text)
    }

    /// Every instance (any state), following DescribeInstances' NextToken: moto answers in
    /// pages (50 reservations by default), so one unpaged call misses VMs past the first page.
    pub async fn all_instances(&self) -> Vec<roxml::Instance> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut params = vec![("MaxResults", "1000")];
            if let Some(t) = &token {
                params.push(("NextToken", t.as_str()));
            }
            let page = self.ec2(REGION, "DescribeInstances", &params).await;
            all.extend(page.instances());
            match page.first_text(&["nextToken"]).filter(|t| !t.is_empty()) {
                Some(next) => token = Some(next),
                None => return all,
            }
        }
    }

    /// Instances (any state) whose `Name` tag is `name`.
    pub async fn instances_named(&self, name: &str) -> Vec<roxml::Instance> {
        self.ec2(
            REGION,
            "DescribeInstances",
            &[("Filter.1.Name", "tag:Name"), ("Filter.1.Value.1", name)],
        )
        .await
        .instances()
    }

    /// Instances named `name` that are not terminated or shutting down.
    pub async fn live_instances_named(&self, name: &str) -> Vec<roxml::Instance> {
        self.instances_named(name)
            .await
            .into_iter()
            .filter(|i| !matches!(i.state.as_str(), "terminated" | "shutting-down"))
            .collect()
    }

    pub async fn instance(&self, id: &str) -> roxml::Instance {
        let mut all = self
            .ec2(REGION, "DescribeInstances", &[("InstanceId.1", id)])
            .await
            .instances();
        assert_eq!(all.len(), 1, "moto knows instance {id}");
        all.remove(0)
    }

    /// An instance attribute (`userData`, `sourceDestCheck`, ...) as text.
    pub async fn attribute(&self, id: &str, attribute: &str) -> String {
        let doc = self
            .ec2(
                REGION,
                "DescribeInstanceAttribute",
                &[("InstanceId", id), ("Attribute", attribute)],
            )
            .await;
        doc.first_text(&[attribute, "value"]).unwrap_or_default()
    }

    /// (size GiB, volume type) of a volume.
    pub async fn volume(&self, id: &str) -> (String, String) {
        let doc = self
            .ec2(REGION, "DescribeVolumes", &[("VolumeId.1", id)])
            .await;
        (
            doc.first_text(&["size"]).unwrap_or_default(),
            doc.first_text(&["volumeType"]).unwrap_or_default(),
        )
    }

    /// An AMI moto serves in the region.
    pub async fn some_ami(&self) -> String {
        self.class_resources().await.0
    }

    /// What the test class refers to: (AMI, subnet, security group); also creates the class's
    /// IAM instance profile (moto checks that it exists, as EC2 does).
    pub async fn class_resources(&self) -> (String, String, String) {
        let r = self
            .server
            .class_resources(INSTANCE_PROFILE, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (r.ami, r.subnet, r.security_group)
    }

    /// Subnet and security group of moto's default VPC.
    /// Also makes sure the class's IAM instance profile exists.
    pub async fn default_network(&self) -> (String, String) {
        let (_, subnet, group) = self.class_resources().await;
        (subnet, group)
    }
}

/// Just enough XML reading for assertions.
pub mod roxml {
    /// An EC2 answer.
    pub struct Doc(pub String);

    #[derive(Clone, Debug, Default)]
    pub struct Instance {
        pub id: String,
        pub state: String,
        pub instance_type: String,
        pub image_id: String,
        pub private_dns_name: String,
        pub client_token: String,
        pub tags: std::collections::BTreeMap<String, String>,
        /// (device name, volume id)
        pub block_devices: Vec<(String, String)>,
    }

    fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
        n.children().find(|c| c.tag_name().name() == name)
    }
    fn text(n: roxmltree::Node, name: &str) -> String {
        child(n, name)
            .and_then(|c| c.text())
            .unwrap_or("")
            .trim()
            .to_string()
    }
    fn items<'a, 'i>(n: roxmltree::Node<'a, 'i>, set: &str) -> Vec<roxmltree::Node<'a, 'i>> {
        child(n, set)
            .map(|s| {
                s.children()
                    .filter(|c| c.tag_name().name() == "item")
                    .collect()
            })
            .unwrap_or_default()
    }

    impl Doc {
        fn parse(&self) -> roxmltree::Document<'_> {
            roxmltree::Document::parse(&self.0).unwrap_or_else(|e| {
                panic!("moto answered XML that does not parse ({e}): {}", self.0)
            })
        }

        /// The text of the first element at this path of names (searched anywhere).
        pub fn first_text(&self, path: &[&str]) -> Option<String> {
            let doc = self.parse();
            let first = doc.descendants().find(|n| n.tag_name().name() == path[0])?;
            let mut node = first;
            for name in &path[1..] {
                node = child(node, name)?;
            }
            node.text().map(|t| t.trim().to_string())
        }

        pub fn instances(&self) -> Vec<Instance> {
            let doc = self.parse();
            let root = doc.root_element();
            let mut out = Vec::new();
            for r in items(root, "reservationSet") {
                for i in items(r, "instancesSet") {
                    out.push(Instance {
                        id: text(i, "instanceId"),
                        state: child(i, "instanceState")
                            .map(|s| text(s, "name"))
                            .unwrap_or_default(),
                        instance_type: text(i, "instanceType"),
                        image_id: text(i, "imageId"),
                        private_dns_name: text(i, "privateDnsName"),
                        client_token: text(i, "clientToken"),
                        tags: items(i, "tagSet")
                            .into_iter()
                            .map(|t| (text(t, "key"), text(t, "value")))
                            .collect(),
                        block_devices: items(i, "blockDeviceMapping")
                            .into_iter()
                            .map(|b| {
                                (
                                    text(b, "deviceName"),
                                    child(b, "ebs")
                                        .map(|e| text(e, "volumeId"))
                                        .unwrap_or_default(),
                                )
                            })
                            .collect(),
                    });
                }
            }
            out
        }
    }
}

/// What the proxy does to one request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and body without forwarding.
    Status(u16, &'static str),
    /// EC2's throttling answer (503 RequestLimitExceeded) without forwarding.
    Throttle,
    /// Forward, then hold the answer this long before sending it.
    SlowAnswer(Duration),
    /// Close the connection without forwarding or answering.
    Drop,
    /// Forward (moto does the work), then close the connection without answering.
    DropAnswer,
}

pub const INTERNAL_ERROR_XML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>InternalError</Code><Message>An internal error has occurred</Message></Error></Errors><RequestID>fault</RequestID></Response>";
pub const UNAVAILABLE_XML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>Unavailable</Code><Message>The server is temporarily unable to service your request</Message></Error></Errors><RequestID>fault</RequestID></Response>";
pub const THROTTLE_XML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>fault</RequestID></Response>";

#[derive(Default)]
struct ProxyState {
    /// (EC2 action it applies to, fault); each is used once, in order.
    faults: Mutex<VecDeque<(String, Fault)>>,
    /// Every EC2 action that reached the proxy, in order.
    actions: Mutex<Vec<String>>,
    /// The `authorization` header of every request, in order.
    authorizations: Mutex<Vec<String>>,
    requests: AtomicU64,
    /// Faults drawn at random for every request, when set.
    random: Mutex<Option<RandomFaults>>,
    /// Faults applied so far, by kind ([`Fault::kind`]).
    injected: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// EC2's request throttling, when emulated.
    throttle: Mutex<Option<crate::throttle::Throttle>>,
    /// (when, action, throttled) of every request since the proxy started.
    timeline: Mutex<Vec<(std::time::Instant, String, bool)>>,
    /// Error answers of the cloud itself (not the proxy's faults or throttling), by
    /// "action status code".
    cloud_errors: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// A share of requests that get a fault, drawn from a seeded generator (xorshift64*) so that a
/// run can be repeated.
struct RandomFaults {
    per_mille: u64,
    state: u64,
}

impl RandomFaults {
    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The fault for the next request, if it gets one: 500, 503, throttling, a dropped
    /// connection, or an answer lost after the cloud acted, equally likely.
    fn draw(&mut self) -> Option<Fault> {
        if self.next() % 1000 >= self.per_mille {
            return None;
        }
        Some(match self.next() % 5 {
            0 => Fault::Status(500, INTERNAL_ERROR_XML),
            1 => Fault::Status(503, UNAVAILABLE_XML),
            2 => Fault::Throttle,
            3 => Fault::Drop,
            _ => Fault::DropAnswer,
        })
    }
}

impl Fault {
    /// A short name of the kind of fault, for counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Status(500, _) => "500",
            Fault::Status(503, _) => "503",
            Fault::Status(..) => "status",
            Fault::Throttle => "throttle",
            Fault::SlowAnswer(_) => "slow answer",
            Fault::Drop => "dropped connection",
            Fault::DropAnswer => "answer lost after the cloud acted",
        }
    }
}

/// A loopback HTTP/1.1 proxy in front of moto that counts requests and injects faults.
#[derive(Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub endpoint: String,
    state: Arc<ProxyState>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState::default());
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let _ = sock.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(sock, upstream, s).await;
                });
            }
        });
        FaultProxy {
            addr,
            endpoint: format!("http://{addr}"),
            state,
        }
    }

    /// Apply `fault` to the next request for EC2 `action`.
    pub fn inject(&self, action: &str, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap()
            .push_back((action.to_string(), fault));
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The EC2 actions seen so far (and forget them).
    pub fn take_actions(&self) -> Vec<String> {
        std::mem::take(&mut *self.state.actions.lock().unwrap())
    }

    /// The `authorization` headers seen so far (and forget them).
    pub fn take_authorizations(&self) -> Vec<String> {
        std::mem::take(&mut *self.state.authorizations.lock().unwrap())
    }

    /// From now on, `per_mille` of all requests (any action) get a random fault (see
    /// [`Fault`]), drawn from `seed`; 0 turns it off. Faults queued with [`FaultProxy::inject`]
    /// come first.
    pub fn random_faults(&self, per_mille: u64, seed: u64) {
        *self.state.random.lock().unwrap() = (per_mille > 0).then_some(RandomFaults {
            per_mille,
            state: seed | 1,
        });
    }

    /// Faults applied so far, by kind.
    pub fn injected(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.state.injected.lock().unwrap().clone()
    }

    /// Faults injected but not used yet.
    pub fn pending_faults(&self) -> usize {
        self.state.faults.lock().unwrap().len()
    }

    /// Forget the faults injected but not used yet.
    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    /// From now on, answer requests as EC2's throttling would (see [`crate::throttle`]):
    /// 503 `RequestLimitExceeded` when the action's bucket is empty.
    pub fn throttle(&self, settings: crate::throttle::Throttling) {
        *self.state.throttle.lock().unwrap() = Some(crate::throttle::Throttle::new(settings));
    }

    /// Requests the throttle emulator refused, by action.
    pub fn throttled(&self) -> std::collections::BTreeMap<String, u64> {
        self.state
            .throttle
            .lock()
            .unwrap()
            .as_ref()
            .map(|t| t.throttled.clone())
            .unwrap_or_default()
    }

    /// Requests by EC2 action since the proxy started (refused ones included).
    pub fn requests_by_action(&self) -> std::collections::BTreeMap<String, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for (_, action, _) in self.state.timeline.lock().unwrap().iter() {
            *counts.entry(action.clone()).or_default() += 1;
        }
        counts
    }

    /// Error answers of the cloud behind the proxy (status 400 and up, not the proxy's own
    /// faults or throttling), counted by "action status code", e.g.
    /// `TerminateInstances 400 InvalidInstanceID.NotFound`.
    pub fn cloud_errors(&self) -> std::collections::BTreeMap<String, u64> {
        self.state.cloud_errors.lock().unwrap().clone()
    }

    /// (when, action, throttled) of every request since the proxy started.
    pub fn timeline(&self) -> Vec<(std::time::Instant, String, bool)> {
        self.state.timeline.lock().unwrap().clone()
    }
}

struct HttpRequest {
    head: String,
    body: Vec<u8>,
}

async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<HttpRequest>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                })
                .map(|(_, v)| v.trim().parse().unwrap_or(0))
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 8192];
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Ok(Some(HttpRequest { head, body }));
        }
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn write_response(
    sock: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} Fault\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: keep-alive\r\n\r\n",
        body.len()
    );
    // One write: a head and a body in two small segments would meet Nagle + delayed ACK (40 ms).
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    sock.write_all(&out).await?;
    sock.flush().await
}

/// The EC2 action of a Query API request; for any other API, its method and path (query
/// dropped, segments with digits shown as `{id}`), e.g. `GET /v1/machines/{id}`.
fn action_of(head: &str, body: &[u8]) -> String {
    if let Some(action) = String::from_utf8_lossy(body)
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
    {
        return action.to_string();
    }
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    let path: Vec<&str> = path
        .split('/')
        .map(|seg| {
            let version = seg
                .strip_prefix('v')
                .is_some_and(|n| n.parse::<u32>().is_ok());
            if seg.bytes().any(|b| b.is_ascii_digit()) && !version {
                "{id}"
            } else {
                seg
            }
        })
        .collect();
    format!("{method} {}", path.join("/"))
}

async fn serve_connection(
    mut sock: TcpStream,
    upstream: SocketAddr,
    state: Arc<ProxyState>,
) -> std::io::Result<()> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut sock, &mut buf).await? {
        state.requests.fetch_add(1, Ordering::SeqCst);
        let action = action_of(&req.head, &req.body);
        state.actions.lock().unwrap().push(action.clone());
        let authorization = req
            .head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("authorization")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        state.authorizations.lock().unwrap().push(authorization);
        let fault = {
            let mut faults = state.faults.lock().unwrap();
            let pos = faults.iter().position(|(a, _)| *a == action);
            pos.and_then(|p| faults.remove(p)).map(|(_, f)| f)
        };
        let fault = fault.or_else(|| state.random.lock().unwrap().as_mut()?.draw());
        if let Some(f) = &fault {
            *state.injected.lock().unwrap().entry(f.kind()).or_default() += 1;
        }
        let now = std::time::Instant::now();
        let throttled = fault.is_none()
            && state.throttle.lock().unwrap().as_mut().is_some_and(|t| {
                let instances =
                    crate::throttle::instances_of(&action, &String::from_utf8_lossy(&req.body));
                !t.admit(&action, instances, now)
            });
        state
            .timeline
            .lock()
            .unwrap()
            .push((now, action.clone(), throttled));
        if throttled {
            write_response(&mut sock, 503, "text/xml", THROTTLE_XML.as_bytes()).await?;
            continue;
        }
        match fault {
            Some(Fault::Status(status, body)) => {
                let ct = if body.starts_with('<') {
                    "text/xml"
                } else {
                    "text/plain"
                };
                write_response(&mut sock, status, ct, body.as_bytes()).await?;
                continue;
            }
            Some(Fault::Throttle) => {
                write_response(&mut sock, 503, "text/xml", THROTTLE_XML.as_bytes()).await?;
                continue;
            }
            Some(Fault::Drop) => return Ok(()),
            _ => {}
        }
        // Forward to moto with the original headers (moto reads the region from them).
        let mut lines = req.head.lines();
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("POST").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let mut forward = client
            .request(method.parse().unwrap(), format!("http://{upstream}{path}"))
            .body(req.body.clone());
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim();
                if !["host", "content-length", "connection"]
                    .iter()
                    .any(|h| k.eq_ignore_ascii_case(h))
                {
                    forward = forward.header(k, v.trim());
                }
            }
        }
        let (status, ct, body) = match forward.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let ct = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("text/xml")
                    .to_string();
                (
                    status,
                    ct,
                    resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
                )
            }
            Err(e) => (
                502,
                "text/plain".to_string(),
                format!("proxy: {e}").into_bytes(),
            ),
        };
        if status >= 400 {
            let code = crate::moto::first_text(&String::from_utf8_lossy(&body), "Code");
            let key = format!("{action} {status} {}", code.unwrap_or_default());
            *state.cloud_errors.lock().unwrap().entry(key).or_default() += 1;
        }
        match fault {
            Some(Fault::DropAnswer) => return Ok(()),
            Some(Fault::SlowAnswer(d)) => tokio::time::sleep(d).await,
            _ => {}
        }
        write_response(&mut sock, status, &ct, &body).await?;
    }
    Ok(())
}

/// A providerSpec for moto in [`REGION`].
pub fn provider_spec(ami: &str, subnet: &str, group: &str) -> serde_json::Value {
    serde_json::json!({
        "ami": ami,
        "region": REGION,
        "machineType": "m5.large",
        "iam": {"name": INSTANCE_PROFILE},
        "keyName": "shoot--a-ssh",
        "networkInterfaces": [{"subnetID": subnet, "securityGroupIDs": [group]}],
        "blockDevices": [
            {"deviceName": "/root", "ebs": {"volumeSize": 50, "volumeType": "gp3", "encrypted": true}},
            {"deviceName": "/dev/sdb", "ebs": {"volumeSize": 100, "volumeType": "gp2"}},
        ],
        "tags": {
            "kubernetes.io/cluster/shoot--a": "1",
            "kubernetes.io/role/node": "1",
            "team": "mcm-wasm",
        },
    })
}

pub fn secret() -> std::collections::BTreeMap<String, Vec<u8>> {
    std::collections::BTreeMap::from([
        (
            "providerAccessKeyId".to_string(),
            ACCESS_KEY.as_bytes().to_vec(),
        ),
        (
            "providerSecretAccessKey".to_string(),
            SECRET_KEY.as_bytes().to_vec(),
        ),
        (
            "userData".to_string(),
            b"#!/bin/bash\necho <<MACHINE_NAME>>".to_vec(),
        ),
    ])
}

/// A MachineDeployment `name` of class `class` at 0 replicas (rolling update, surge 1,
/// unavailable 0), its machines labelled `pool: <name>`: scaled by the tests.
pub fn machine_deployment(name: &str, class: &str) -> machine_api::MachineDeployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1",
        "kind": "MachineDeployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"pool": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"pool": name}},
                "spec": {"class": {"kind": "MachineClass", "name": class}},
            },
        },
    }))
    .expect("a valid MachineDeployment")
}

/// The Secret `aws-secret` (user data and moto's credentials) and the MachineClass `aws-class`
/// of the AWS provider in namespace `ns`, pointed at moto's AMI, subnet and security group.
pub async fn create_aws_class(client: &kube::Client, ns: &str, moto: &Moto) {
    create_aws_class_for(client, ns, moto, "aws").await
}

/// [`create_aws_class`] with the class's `provider` set to `provider` (e.g. `AWS`, as
/// provider-aws users write it).
pub async fn create_aws_class_for(client: &kube::Client, ns: &str, moto: &Moto, provider: &str) {
    use kube::api::{Api, PostParams};
    let (ami, subnet, group) = moto.class_resources().await;
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "aws-secret" },
        "stringData": {
            "userData": "#!/bin/bash\necho <<MACHINE_NAME>>",
            "providerAccessKeyId": ACCESS_KEY,
            "providerSecretAccessKey": SECRET_KEY,
        },
    }))
    .unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let class: machine_api::MachineClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "machine.sapcloud.io/v1alpha1",
        "kind": "MachineClass",
        "metadata": { "name": "aws-class" },
        "provider": provider,
        "providerSpec": provider_spec(&ami, &subnet, &group),
        "secretRef": { "name": "aws-secret", "namespace": ns },
    }))
    .unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_faults_hit_their_share_with_every_kind_and_repeat_by_seed() {
        let draws = |seed: u64| {
            let mut r = RandomFaults {
                per_mille: 100,
                state: seed | 1,
            };
            (0..20_000)
                .map(|_| r.draw().map(|f| f.kind()))
                .collect::<Vec<_>>()
        };
        let run = draws(42);
        let faults: Vec<&str> = run.iter().flatten().copied().collect();
        assert!(
            (1_700..2_300).contains(&faults.len()),
            "{} faults in 20,000 at 10 %",
            faults.len()
        );
        for kind in [
            "500",
            "503",
            "throttle",
            "dropped connection",
            "answer lost after the cloud acted",
        ] {
            let n = faults.iter().filter(|k| **k == kind).count();
            assert!(n > 250, "{kind}: {n}");
        }
        assert_eq!(run, draws(42), "same seed, same faults");
        assert_ne!(run, draws(7));
    }
}

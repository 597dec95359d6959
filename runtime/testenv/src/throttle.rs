//! An EC2 throttle emulator for the fault proxy: EC2's token buckets (AWS's "Request throttling
//! for the Amazon EC2 API"), applied per action as EC2 does per account and region. This is a
//! fake of the cloud's metering, for tests and benchmarks: moto does not throttle.
//!
//! - Request rate limiting: every request takes a token of its action's bucket (RunInstances 5,
//!   refilled at 2/s; TerminateInstances 100 at 5/s; non-mutating actions — Describe*, Get*,
//!   List* — 100 at 20/s; other mutating actions 50 at 5/s).
//! - Resource rate limiting: RunInstances also takes one token per instance (`MaxCount`) from a
//!   bucket of 1,000 refilled at 2/s, TerminateInstances one per instance ID from 1,000 at 20/s.
//! - A request that finds a bucket empty is answered 503 `RequestLimitExceeded` without
//!   reaching moto, and takes nothing from the other bucket.
//!
//! `factor` scales every refill rate (capacities stay AWS's), so that a short run meets the
//! same limits a long one would: ×5 turns RunInstances' 2/s into 10/s.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// One bucket's size: `capacity` tokens, refilled at `refill` per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketSize {
    pub capacity: f64,
    pub refill: f64,
}

const fn size(capacity: f64, refill: f64) -> BucketSize {
    BucketSize { capacity, refill }
}

/// EC2's default request bucket of `action`.
pub fn request_bucket(action: &str) -> BucketSize {
    match action {
        "RunInstances" => size(5.0, 2.0),
        "TerminateInstances" => size(100.0, 5.0),
        a if ["Describe", "Get", "List"].iter().any(|p| a.starts_with(p)) => size(100.0, 20.0),
        _ => size(50.0, 5.0),
    }
}

/// EC2's default resource bucket of `action`, if it has one.
pub fn resource_bucket(action: &str) -> Option<BucketSize> {
    match action {
        "RunInstances" => Some(size(1000.0, 2.0)),
        "TerminateInstances" => Some(size(1000.0, 20.0)),
        _ => None,
    }
}

/// The emulator's settings: EC2's defaults with every refill rate × `factor`, and buckets of
/// one's own for some actions (a tight test).
#[derive(Clone, Debug)]
pub struct Throttling {
    pub factor: f64,
    /// Request buckets replacing EC2's for these actions (not scaled by `factor`).
    pub overrides: BTreeMap<String, BucketSize>,
}

impl Throttling {
    /// EC2's default buckets, refill rates × `factor`.
    pub fn ec2(factor: f64) -> Throttling {
        Throttling {
            factor,
            overrides: BTreeMap::new(),
        }
    }

    /// With `action`'s request bucket set to `capacity` refilled at `refill`/s.
    pub fn with(mut self, action: &str, capacity: f64, refill: f64) -> Throttling {
        self.overrides
            .insert(action.to_string(), size(capacity, refill));
        self
    }

    fn request_size(&self, action: &str) -> BucketSize {
        self.overrides.get(action).copied().unwrap_or_else(|| {
            let s = request_bucket(action);
            size(s.capacity, s.refill * self.factor)
        })
    }

    fn resource_size(&self, action: &str) -> Option<BucketSize> {
        resource_bucket(action).map(|s| size(s.capacity, s.refill * self.factor))
    }
}

#[derive(Debug)]
struct Bucket {
    size: BucketSize,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(size: BucketSize, now: Instant) -> Bucket {
        Bucket {
            size,
            tokens: size.capacity,
            at: now,
        }
    }

    fn level(&mut self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.size.refill).min(self.size.capacity);
        self.at = now;
        self.tokens
    }
}

/// The emulator's state: the buckets as they are now, and what it refused.
#[derive(Debug)]
pub struct Throttle {
    settings: Throttling,
    requests: HashMap<String, Bucket>,
    resources: HashMap<String, Bucket>,
    /// Requests refused, by action.
    pub throttled: BTreeMap<String, u64>,
}

impl Throttle {
    pub fn new(settings: Throttling) -> Throttle {
        Throttle {
            settings,
            requests: HashMap::new(),
            resources: HashMap::new(),
            throttled: BTreeMap::new(),
        }
    }

    /// May a request of `action` for `instances` instances (RunInstances' MaxCount,
    /// TerminateInstances' IDs; 1 elsewhere) go through at `now`? Takes its tokens if so.
    pub fn admit(&mut self, action: &str, instances: u32, now: Instant) -> bool {
        let request_size = self.settings.request_size(action);
        let request = self
            .requests
            .entry(action.to_string())
            .or_insert_with(|| Bucket::new(request_size, now));
        let request_ok = request.level(now) >= 1.0;
        let resource_size = self.settings.resource_size(action);
        let resource_ok = match resource_size {
            Some(s) => {
                let bucket = self
                    .resources
                    .entry(action.to_string())
                    .or_insert_with(|| Bucket::new(s, now));
                bucket.level(now) >= instances as f64
            }
            None => true,
        };
        if !(request_ok && resource_ok) {
            *self.throttled.entry(action.to_string()).or_default() += 1;
            return false;
        }
        self.requests.get_mut(action).expect("made above").tokens -= 1.0;
        if let Some(bucket) = self.resources.get_mut(action) {
            bucket.tokens -= instances as f64;
        }
        true
    }
}

/// How many instances a Query API request body acts on (for the resource buckets).
pub fn instances_of(action: &str, body: &str) -> u32 {
    let params = || body.split('&').filter_map(|kv| kv.split_once('='));
    match action {
        "RunInstances" => params()
            .find(|(k, _)| *k == "MaxCount")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(1),
        "TerminateInstances" => params()
            .filter(|(k, _)| k.starts_with("InstanceId."))
            .count()
            .max(1) as u32,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn run_instances_gets_its_burst_then_its_refill_rate() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Throttling::ec2(5.0));
        let admitted = (0..20).filter(|_| t.admit("RunInstances", 1, t0)).count();
        assert_eq!(admitted, 5, "the burst");
        assert_eq!(t.throttled["RunInstances"], 15);
        // ×5: 10 per second.
        let later = t0 + Duration::from_secs(1);
        let admitted = (0..20)
            .filter(|_| t.admit("RunInstances", 1, later))
            .count();
        assert_eq!(admitted, 5, "capped at the capacity");
        let admitted = (0..20)
            .filter(|_| t.admit("RunInstances", 1, later + Duration::from_millis(300)))
            .count();
        assert_eq!(admitted, 3, "0.3 s at 10/s");
        // Other actions have buckets of their own.
        assert!(t.admit("DescribeInstances", 1, later));
    }

    #[test]
    fn the_resource_bucket_counts_instances() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Throttling::ec2(1.0).with("RunInstances", 1e9, 1e9));
        assert!(t.admit("RunInstances", 600, t0));
        assert!(!t.admit("RunInstances", 600, t0), "1,000 instances at most");
        assert!(t.admit("RunInstances", 400, t0));
        assert!(!t.admit("RunInstances", 1, t0));
        assert!(
            t.admit("RunInstances", 2, t0 + Duration::from_secs(1)),
            "2/s"
        );
    }

    #[test]
    fn instance_counts_from_the_body() {
        assert_eq!(
            instances_of("RunInstances", "Action=RunInstances&MinCount=1&MaxCount=3"),
            3
        );
        assert_eq!(
            instances_of(
                "TerminateInstances",
                "Action=TerminateInstances&InstanceId.1=i-1&InstanceId.2=i-2"
            ),
            2
        );
        assert_eq!(
            instances_of("DescribeInstances", "Action=DescribeInstances"),
            1
        );
    }
}

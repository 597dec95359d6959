//! Answers a guest asked the host to keep: a request carrying [`CACHE_TTL_HEADER`] (seconds)
//! whose answer is a success is answered from memory for that long (at most
//! [`MAX_TTL`]) to any call that sends the same request with the same credential — without a
//! token of its rate bucket, without reaching the cloud. For reads that do not change while a
//! scale-up runs: the AWS provider's DescribeImages of the class's AMI, asked once per
//! machine, is asked once per minute instead.
//!
//! The key is (credential fingerprint, method, URL, body): never the headers, which carry a
//! signature and a timestamp that differ per request; the credential keeps one account's
//! answers from another's. At most [`MAX_ENTRIES`] answers are kept; the oldest go first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The request header asking the host to keep the answer this many seconds (removed before
/// sending).
pub const CACHE_TTL_HEADER: &str = "mcm-wasm-cache-ttl";
/// The longest a guest may have an answer kept.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// The most answers kept at once.
pub const MAX_ENTRIES: usize = 1024;

/// What an answer is kept under.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub credential: String,
    pub method: String,
    pub url: String,
    pub body: Vec<u8>,
}

/// The process's kept answers (`T`: the answer type).
pub struct ResponseCache<T> {
    entries: Mutex<Entries<T>>,
}

/// Answers with their expiry, and their keys oldest first.
type Entries<T> = (HashMap<CacheKey, (Instant, T)>, VecDeque<CacheKey>);

impl<T> Default for ResponseCache<T> {
    fn default() -> Self {
        ResponseCache {
            entries: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }
}

impl<T: Clone> ResponseCache<T> {
    /// The kept answer of `key`, if it has not expired.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<T> {
        let mut guard = self.entries.lock().unwrap();
        let (map, _) = &mut *guard;
        match map.get(key) {
            Some((expires, answer)) if *expires > now => Some(answer.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keep `answer` of `key` for `ttl` (at most [`MAX_TTL`]).
    pub fn put(&self, key: CacheKey, answer: T, ttl: Duration, now: Instant) {
        let mut guard = self.entries.lock().unwrap();
        let (map, order) = &mut *guard;
        if map
            .insert(key.clone(), (now + ttl.min(MAX_TTL), answer))
            .is_none()
        {
            order.push_back(key);
        }
        while map.len() > MAX_ENTRIES {
            match order.pop_front() {
                Some(oldest) => {
                    map.remove(&oldest);
                }
                None => break,
            }
        }
        // Keys of answers that expired and were dropped by `get` may linger in `order`.
        if order.len() > 2 * MAX_ENTRIES {
            order.retain(|k| map.contains_key(k));
        }
    }
}

/// Remove the TTL header from `headers`; the TTL it asked for (none if absent, zero or not a
/// number of seconds).
pub fn take_ttl(headers: &mut Vec<(String, String)>) -> Option<Duration> {
    let mut ttl = None;
    headers.retain(|(k, v)| {
        if k.eq_ignore_ascii_case(CACHE_TTL_HEADER) {
            ttl = v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .map(Duration::from_secs);
            false
        } else {
            true
        }
    });
    ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(credential: &str, body: &str) -> CacheKey {
        CacheKey {
            credential: credential.into(),
            method: "POST".into(),
            url: "http://127.0.0.1:5000/".into(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_are_kept_for_their_ttl_per_credential_and_body() {
        let cache = ResponseCache::default();
        let t0 = Instant::now();
        cache.put(
            key("c1", "Action=DescribeImages&ImageId.1=ami-1"),
            1,
            Duration::from_secs(60),
            t0,
        );
        let later = t0 + Duration::from_secs(59);
        assert_eq!(
            cache.get(&key("c1", "Action=DescribeImages&ImageId.1=ami-1"), later),
            Some(1)
        );
        assert_eq!(
            cache.get(&key("c2", "Action=DescribeImages&ImageId.1=ami-1"), later),
            None,
            "another credential"
        );
        assert_eq!(
            cache.get(&key("c1", "Action=DescribeImages&ImageId.1=ami-2"), later),
            None,
            "another request"
        );
        assert_eq!(
            cache.get(
                &key("c1", "Action=DescribeImages&ImageId.1=ami-1"),
                t0 + Duration::from_secs(61)
            ),
            None,
            "expired"
        );
        // A TTL is capped.
        cache.put(key("c1", "x"), 2, Duration::from_secs(86_400), t0);
        assert_eq!(
            cache.get(&key("c1", "x"), t0 + MAX_TTL + Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn the_oldest_answers_go_first_beyond_the_bound() {
        let cache = ResponseCache::default();
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES + 10 {
            cache.put(key("c", &i.to_string()), i, Duration::from_secs(60), t0);
        }
        assert_eq!(cache.get(&key("c", "0"), t0), None);
        assert_eq!(cache.get(&key("c", "9"), t0), None);
        assert_eq!(cache.get(&key("c", "10"), t0), Some(10));
        assert_eq!(
            cache.get(&key("c", &(MAX_ENTRIES + 9).to_string()), t0),
            Some(MAX_ENTRIES + 9)
        );
    }

    #[test]
    fn the_ttl_header_is_taken_out() {
        let mut headers = vec![
            ("Mcm-Wasm-Cache-Ttl".to_string(), "60".to_string()),
            ("content-type".to_string(), "x".to_string()),
        ];
        assert_eq!(take_ttl(&mut headers), Some(Duration::from_secs(60)));
        assert_eq!(headers.len(), 1);
        let mut bad = vec![("mcm-wasm-cache-ttl".to_string(), "soon".to_string())];
        assert_eq!(take_ttl(&mut bad), None);
        assert!(bad.is_empty(), "removed even when not understood");
    }
}

//! Host-brokered credentials (contract 0.1.1): when the operator turns brokering on for the
//! provider, the host withholds the secret's credential keys from every request and signs
//! outgoing requests itself. A provider checks [`withheld_keys`] and then either signs with the
//! keys it has or asks the host with [`send_aws_sigv4`].

use crate::bindings::mcm::driver::credentials as wit;
use crate::http::{Error, Request, Response};

/// The secret keys the host withheld from this call (empty: brokering is off).
pub fn withheld_keys() -> Vec<String> {
    wit::withheld_keys()
}

/// Whether the host brokers `key` for this call.
pub fn is_withheld(key: &str) -> bool {
    withheld_keys().iter().any(|k| k == key)
}

/// Have the host sign `req` with AWS SigV4 (`region`, `service`) using the withheld
/// credentials and send it, as [`crate::http::send`] would.
pub fn send_aws_sigv4(req: &Request, region: &str, service: &str) -> Result<Response, Error> {
    wit::send_aws_sigv4(req, region, service)
}

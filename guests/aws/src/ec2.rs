//! A small EC2 Query API client: builds, signs and sends one action through a [`Transport`]
//! (the host `http` capability in the component), decodes the XML answer and maps errors.

use std::cell::Cell;
use std::time::SystemTime;

use mcm_wasm_sdk::http::{Error as HttpError, Request, Response};
use mcm_wasm_sdk::{Code, DriverError};

use crate::errors;
use crate::query::{self, Action};
use crate::sign;
use crate::spec::Signing;
use crate::xml::{self, Instance};

/// How requests leave the provider.
pub trait Transport {
    fn send(&self, req: &Request) -> Result<Response, HttpError>;
    /// Send independent requests at once (the host's `send-many`); one answer each, in order.
    fn send_many(&self, reqs: &[Request]) -> Vec<Result<Response, HttpError>> {
        reqs.iter().map(|r| self.send(r)).collect()
    }
    /// Whether the host brokers the credentials (they are not in the secret).
    fn brokered(&self) -> bool {
        false
    }
    /// Have the host sign (SigV4) and send the request.
    fn send_signed(&self, _req: &Request, _region: &str) -> Result<Response, HttpError> {
        Err(HttpError::Denied(
            "this transport has no credential broker".into(),
        ))
    }
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    /// Milliseconds left before the host cancels the call (the host's `context`).
    fn remaining_millis(&self) -> u64 {
        u64::MAX
    }
}

pub struct Ec2<'t, T: Transport> {
    transport: &'t T,
    endpoint: String,
    region: String,
    signing: Signing,
    /// Requests sent by this client (logged per operation).
    pub requests: Cell<u32>,
}

/// An EC2 error answer.
#[derive(Debug)]
pub struct ApiError {
    pub aws_code: String,
    pub status: u16,
    pub error: DriverError,
}

impl From<ApiError> for DriverError {
    fn from(e: ApiError) -> Self {
        e.error
    }
}

impl<'t, T: Transport> Ec2<'t, T> {
    pub fn new(transport: &'t T, endpoint: &str, region: &str, signing: Signing) -> Self {
        Ec2 {
            transport,
            endpoint: format!("{}/", endpoint.trim_end_matches('/')),
            region: region.to_string(),
            signing,
            requests: Cell::new(0),
        }
    }

    /// Send one action; the body of a 2xx answer, or the mapped error.
    pub fn call(&self, action: &Action) -> Result<String, ApiError> {
        let req = self.request(action)?;
        self.requests.set(self.requests.get() + 1);
        let sent = match self.signing {
            Signing::Own(_) => self.transport.send(&req),
            Signing::Brokered => self.transport.send_signed(&req, &self.region),
        };
        self.answer(action, sent)
    }

    /// [`Ec2::call`] for independent actions, sent at once (brokered signing: one after
    /// another, the host signs each); one answer per action, in order.
    pub fn call_many(&self, actions: &[&Action]) -> Vec<Result<String, ApiError>> {
        let mut answers: Vec<Option<Result<String, ApiError>>> = Vec::with_capacity(actions.len());
        let mut reqs = Vec::new();
        for action in actions {
            match self.request(action) {
                Ok(req) => {
                    reqs.push(req);
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        self.requests.set(self.requests.get() + reqs.len() as u32);
        let mut sent = match self.signing {
            Signing::Own(_) => self.transport.send_many(&reqs),
            Signing::Brokered => reqs
                .iter()
                .map(|r| self.transport.send_signed(r, &self.region))
                .collect(),
        }
        .into_iter();
        actions
            .iter()
            .zip(answers)
            .map(|(action, answer)| match answer {
                Some(built_wrong) => built_wrong,
                None => self.answer(
                    action,
                    sent.next().unwrap_or_else(|| {
                        Err(HttpError::Other(
                            "the host answered fewer requests than sent".into(),
                        ))
                    }),
                ),
            })
            .collect()
    }

    /// The signed HTTP request of an action.
    fn request(&self, action: &Action) -> Result<Request, ApiError> {
        let body = action.body();
        let mut headers = vec![(
            "content-type".to_string(),
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        )];
        if let Signing::Own(creds) = &self.signing {
            let signed = sign::sign_request(
                "POST",
                &self.endpoint,
                &headers,
                body.as_bytes(),
                creds,
                &self.region,
                "ec2",
                self.transport.now(),
            )
            .map_err(|why| ApiError {
                aws_code: String::new(),
                status: 0,
                error: DriverError::internal(why),
            })?;
            headers.extend(signed);
        }
        // EC2 meters each API action in its own bucket: the action is the rate class (added
        // after signing; the host takes it out before the request leaves).
        headers.push((
            mcm_wasm_sdk::http::RATE_CLASS_HEADER.to_string(),
            action.name.to_string(),
        ));
        if action.cache_secs > 0 {
            headers.push((
                mcm_wasm_sdk::http::CACHE_TTL_HEADER.to_string(),
                action.cache_secs.to_string(),
            ));
        }
        Ok(Request {
            method: "POST".into(),
            url: self.endpoint.clone(),
            headers,
            body: body.into_bytes(),
        })
    }

    /// The body of a 2xx answer to `action`, or the mapped error.
    fn answer(
        &self,
        action: &Action,
        sent: Result<Response, HttpError>,
    ) -> Result<String, ApiError> {
        let resp = sent.map_err(|e| {
            let mut error = DriverError::from(e);
            error.message = format!("EC2 {}: {}", action.name, error.message);
            ApiError {
                aws_code: String::new(),
                status: 0,
                error,
            }
        })?;
        let text = String::from_utf8_lossy(&resp.body).into_owned();
        if (200..300).contains(&resp.status) {
            return Ok(text);
        }
        Err(match xml::parse_error(&text) {
            Some(e) => ApiError {
                error: DriverError::new(
                    errors::code_for(&e.code, resp.status),
                    format!(
                        "EC2 {} failed ({}): {}: {}",
                        action.name, resp.status, e.code, e.message
                    ),
                ),
                aws_code: e.code,
                status: resp.status,
            },
            None => {
                let snippet: String = text.trim().chars().take(200).collect();
                ApiError {
                    aws_code: String::new(),
                    status: resp.status,
                    error: DriverError::new(
                        errors::code_for_status(resp.status),
                        format!(
                            "EC2 {} answered HTTP {}: {snippet}",
                            action.name, resp.status
                        ),
                    ),
                }
            }
        })
    }

    /// Send and decode.
    pub fn call_xml<R: serde::de::DeserializeOwned>(
        &self,
        action: &Action,
    ) -> Result<R, DriverError> {
        let body = self.call(action)?;
        xml::parse(&body).map_err(|e| {
            DriverError::internal(format!(
                "EC2 {} answer could not be decoded: {e}",
                action.name
            ))
        })
    }

    /// All instances a DescribeInstances action matches, following NextToken.
    pub fn describe_all(
        &self,
        first: impl Fn(Option<&str>) -> Action,
    ) -> Result<Vec<Instance>, DriverError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let page: xml::DescribeInstances = self.call_xml(&first(token.as_deref()))?;
            let next = page.next_token.clone().filter(|t| !t.is_empty());
            out.extend(page.instances());
            match next {
                // Stop on a repeated token, as the Go SDK's paginator does.
                Some(t) if seen.insert(t.clone()) => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// One instance by ID; `None` when EC2 does not know it or it is terminated.
    pub fn instance_by_id(&self, id: &str) -> Result<Option<Instance>, DriverError> {
        match self.call(&query::describe_instance(id)) {
            Ok(body) => {
                let page: xml::DescribeInstances = xml::parse(&body).map_err(|e| {
                    DriverError::internal(format!(
                        "EC2 DescribeInstances answer could not be decoded: {e}"
                    ))
                })?;
                Ok(page.instances().find(|i| {
                    i.instance_id == id
                        && query::LIVE_STATES.contains(&i.instance_state.name.as_str())
                }))
            }
            Err(e) if e.error.code == Code::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

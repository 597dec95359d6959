//! The one operation table: each driver operation's WIT name, MCM's (Go) name and its default
//! deadline. Deadlines, dispatch, metrics labels, events and the CLI all read it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The driver operations (the six of MCM plus validate and metrics-labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    CreateMachine,
    InitializeMachine,
    DeleteMachine,
    GetMachineStatus,
    ListMachines,
    GetVolumeIds,
    ValidateMachineClass,
    MetricsLabels,
}

struct Row {
    op: Operation,
    wit: &'static str,
    go: &'static str,
    /// camelCase key in a deadlines object (`{"createMachine": "60s"}`).
    key: &'static str,
    deadline: Duration,
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// In the order of [`Operation`]'s variants (checked by a test).
const TABLE: [Row; 8] = [
    Row {
        op: Operation::CreateMachine,
        wit: "create-machine",
        go: "CreateMachine",
        key: "createMachine",
        deadline: secs(60),
    },
    Row {
        op: Operation::InitializeMachine,
        wit: "initialize-machine",
        go: "InitializeMachine",
        key: "initializeMachine",
        deadline: secs(60),
    },
    Row {
        op: Operation::DeleteMachine,
        wit: "delete-machine",
        go: "DeleteMachine",
        key: "deleteMachine",
        deadline: secs(60),
    },
    Row {
        op: Operation::GetMachineStatus,
        wit: "get-machine-status",
        go: "GetMachineStatus",
        key: "getMachineStatus",
        deadline: secs(30),
    },
    Row {
        op: Operation::ListMachines,
        wit: "list-machines",
        go: "ListMachines",
        key: "listMachines",
        deadline: secs(60),
    },
    Row {
        op: Operation::GetVolumeIds,
        wit: "get-volume-ids",
        go: "GetVolumeIDs",
        key: "getVolumeIds",
        deadline: secs(10),
    },
    Row {
        op: Operation::ValidateMachineClass,
        wit: "validate-machine-class",
        go: "ValidateMachineClass",
        key: "validateMachineClass",
        deadline: secs(5),
    },
    Row {
        op: Operation::MetricsLabels,
        wit: "metrics-labels",
        go: "MetricsLabels",
        key: "metricsLabels",
        deadline: secs(1),
    },
];

impl Operation {
    pub const ALL: [Operation; 8] = [
        Operation::CreateMachine,
        Operation::InitializeMachine,
        Operation::DeleteMachine,
        Operation::GetMachineStatus,
        Operation::ListMachines,
        Operation::GetVolumeIds,
        Operation::ValidateMachineClass,
        Operation::MetricsLabels,
    ];

    fn row(self) -> &'static Row {
        &TABLE[self as usize]
    }

    /// The WIT name, e.g. `create-machine`.
    pub fn wit_name(self) -> &'static str {
        self.row().wit
    }

    /// MCM's (Go) name, e.g. `CreateMachine`, `GetVolumeIDs`.
    pub fn go_name(self) -> &'static str {
        self.row().go
    }

    /// The deadline a call gets unless the operator sets one.
    pub fn default_deadline(self) -> Duration {
        self.row().deadline
    }

    /// Parse a WIT name (`create-machine`) or MCM's Go name (`CreateMachine`, any case).
    pub fn parse(name: &str) -> Option<Operation> {
        TABLE
            .iter()
            .find(|r| r.wit == name || r.go.eq_ignore_ascii_case(name) || r.key == name)
            .map(|r| r.op)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wit_name())
    }
}

/// Per-operation deadlines: each driver call is cancelled when its deadline passes, host HTTP
/// included. As JSON: an object of camelCase operation names and durations
/// (`{"createMachine": "2m"}`); operations left out keep their default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deadlines([Duration; 8]);

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines(TABLE.map(|r| r.deadline))
    }
}

impl Deadlines {
    /// Every operation gets the same deadline.
    pub fn all(d: Duration) -> Self {
        Deadlines([d; 8])
    }

    pub fn get(&self, op: Operation) -> Duration {
        self.0[op as usize]
    }

    pub fn set(&mut self, op: Operation, d: Duration) {
        self.0[op as usize] = d;
    }
}

impl Serialize for Deadlines {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(TABLE.len()))?;
        for row in &TABLE {
            let text = humantime::format_duration(self.get(row.op)).to_string();
            map.serialize_entry(row.key, &text)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Deadlines {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let given = std::collections::BTreeMap::<String, String>::deserialize(d)?;
        let mut out = Deadlines::default();
        for (key, text) in given {
            let row = TABLE.iter().find(|r| r.key == key).ok_or_else(|| {
                let keys: Vec<_> = TABLE.iter().map(|r| r.key).collect();
                D::Error::custom(format!(
                    "unknown operation {key:?} in deadlines (known: {})",
                    keys.join(", ")
                ))
            })?;
            let value = humantime::parse_duration(&text).map_err(|e| {
                D::Error::custom(format!(
                    "deadline of {key}: {text:?} is not a duration: {e}"
                ))
            })?;
            out.set(row.op, value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_the_enum() {
        for (i, op) in Operation::ALL.into_iter().enumerate() {
            assert_eq!(TABLE[i].op, op);
            assert_eq!(op as usize, i);
            assert_eq!(Operation::parse(op.wit_name()), Some(op));
            assert_eq!(Operation::parse(op.go_name()), Some(op));
            assert_eq!(
                serde_json::to_value(op).unwrap(),
                serde_json::json!(op.wit_name())
            );
        }
        assert_eq!(
            Operation::parse("getvolumeids"),
            Some(Operation::GetVolumeIds)
        );
        assert_eq!(Operation::parse("reboot-machine"), None);
    }

    #[test]
    fn deadlines_as_json() {
        let d: Deadlines = serde_json::from_str(r#"{"createMachine":"2m"}"#).unwrap();
        assert_eq!(d.get(Operation::CreateMachine), Duration::from_secs(120));
        assert_eq!(d.get(Operation::MetricsLabels), Duration::from_secs(1));
        let back: Deadlines = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        let err = serde_json::from_str::<Deadlines>(r#"{"rebootMachine":"1s"}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown operation \"rebootMachine\""),
            "{err}"
        );
        let err = serde_json::from_str::<Deadlines>(r#"{"listMachines":"soon"}"#).unwrap_err();
        assert!(
            err.to_string().contains("deadline of listMachines"),
            "{err}"
        );
    }
}

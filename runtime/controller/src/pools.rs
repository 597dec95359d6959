//! Separate, bounded worker pools for the three kinds of machine work, so that one kind can
//! never take every worker (MCM#943: drains blocked by PodDisruptionBudgets starving creates,
//! because Gardener's machine controller serves all of them from one `--concurrent-syncs` pool).
//!
//! | pool | a reconcile of a Machine that … | flag (default) |
//! |---|---|---|
//! | create | has no VM yet, or whose creation is failing (CrashLoopBackOff) | `--create-workers` (`--concurrent-syncs`, 50) |
//! | delete | is being deleted (drain, VM deletion, node deletion) | `--delete-workers` (`--concurrent-syncs`) |
//! | health | has a VM: health, status, registration | `--health-workers` (`--concurrent-syncs`) |
//!
//! Each reconcile holds a permit of its pool for its whole run (a drain waiting on a budget
//! holds a delete permit, never a create permit); a reconcile waiting for a permit holds
//! nothing else. The kube-runtime Controller itself is unbounded for that reason: with a
//! Controller limit, reconciles queued behind a full delete pool would fill the Controller's
//! slots and a create would wait behind them after all (found by the e2e test
//! `blocked_drains_do_not_starve_creation`, with 20 blocked drains, 10 delete workers and a
//! limit of 18). A reconcile that waited reads its Machine afresh from the reflector before it
//! runs. Which pool is the pure [`work_of`], the same rule `create::reconcile` uses to choose
//! between the health check and the creation flow. `mcm_wasm_workers_busy{pool}` shows how
//! full each is.

use machine_api::{Machine, MachinePhase};
use tokio::sync::{Semaphore, SemaphorePermit};

/// The kind of work a reconcile of a Machine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    Create,
    Delete,
    Health,
}

impl Work {
    pub fn label(self) -> &'static str {
        match self {
            Work::Create => "create",
            Work::Delete => "delete",
            Work::Health => "health",
        }
    }
}

/// The pool a reconcile of `machine` runs in.
pub fn work_of(machine: &Machine) -> Work {
    if machine.metadata.deletion_timestamp.is_some() {
        Work::Delete
    } else if machine.spec.provider_id.is_empty()
        || matches!(machine.phase(), None | Some(MachinePhase::CrashLoopBackOff))
    {
        Work::Create
    } else {
        Work::Health
    }
}

/// Sizes of the pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSizes {
    pub create: usize,
    pub delete: usize,
    pub health: usize,
}

impl PoolSizes {
    /// Every pool of size `n` (MCM's `--concurrent-syncs`).
    pub fn all(n: usize) -> PoolSizes {
        PoolSizes {
            create: n,
            delete: n,
            health: n,
        }
    }
}

/// The three pools.
pub struct Pools {
    create: Semaphore,
    delete: Semaphore,
    health: Semaphore,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools").finish_non_exhaustive()
    }
}

impl Pools {
    pub fn new(sizes: PoolSizes) -> Pools {
        Pools {
            create: Semaphore::new(sizes.create.max(1)),
            delete: Semaphore::new(sizes.delete.max(1)),
            health: Semaphore::new(sizes.health.max(1)),
        }
    }

    /// Wait for a worker of `work`'s pool.
    pub async fn acquire(&self, work: Work) -> SemaphorePermit<'_> {
        let pool = match work {
            Work::Create => &self.create,
            Work::Delete => &self.delete,
            Work::Health => &self.health,
        };
        pool.acquire().await.expect("the pools are never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(provider_id: &str, phase: Option<MachinePhase>, deleting: bool) -> Machine {
        let mut m = crate::fixtures::machine_in("m", provider_id, phase);
        if deleting {
            m.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
        }
        m
    }

    #[test]
    fn work_is_chosen_as_the_reconcile_branches() {
        use MachinePhase::*;
        assert_eq!(work_of(&machine("", None, false)), Work::Create);
        assert_eq!(work_of(&machine("aws:///i-1", None, false)), Work::Create);
        assert_eq!(
            work_of(&machine("aws:///i-1", Some(CrashLoopBackOff), false)),
            Work::Create
        );
        for phase in [Pending, Running, Unknown, Failed, Available] {
            assert_eq!(
                work_of(&machine("aws:///i-1", Some(phase.clone()), false)),
                Work::Health,
                "{phase:?}"
            );
        }
        assert_eq!(
            work_of(&machine("aws:///i-1", Some(Running), true)),
            Work::Delete
        );
        assert_eq!(work_of(&machine("", None, true)), Work::Delete);
    }

    #[tokio::test]
    async fn a_full_pool_does_not_block_the_others() {
        let pools = Pools::new(PoolSizes::all(1));
        let _draining = pools.acquire(Work::Delete).await;
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            pools.acquire(Work::Delete),
        )
        .await;
        assert!(blocked.is_err(), "the delete pool is full");
        let create = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            pools.acquire(Work::Create),
        )
        .await;
        assert!(create.is_ok(), "a create still gets a worker");
    }
}

//! Child processes that cannot outlive the process that started them.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, not the process; test
//! threads end after each test, so children are spawned by one thread that lives as long as the
//! process. An exit hook also kills what is still running and removes registered directories.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};

use crate::{Result, io_err};

struct SpawnRequest {
    cmd: Command,
    reply: mpsc::Sender<std::io::Result<Child>>,
}

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    let _ = req.reply.send(req.cmd.spawn());
                }
                // The sender lives in a static, so this thread only ends with the process.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the testenv spawner thread");
        Mutex::new(tx)
    })
}

static LIVE_PIDS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static EXIT_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn at_exit() {
    if let Ok(pids) = LIVE_PIDS.lock() {
        for pid in pids.iter() {
            // SAFETY: kill(2) with a pid we spawned and have not reaped.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
        }
        for pid in pids.iter() {
            let mut status = 0;
            // SAFETY: waitpid(2) on our own child.
            unsafe { libc::waitpid(*pid as libc::pid_t, &mut status, 0) };
        }
    }
    if std::env::var_os("MCM_WASM_TESTENV_KEEP").is_none()
        && let Ok(dirs) = EXIT_DIRS.lock()
    {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn register_exit_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a plain extern "C" function.
        unsafe { libc::atexit(at_exit) };
    });
}

/// Removes `dir` when the process exits normally (for state that is never dropped).
pub(crate) fn cleanup_at_exit(dir: PathBuf) {
    register_exit_hook();
    EXIT_DIRS.lock().expect("exit dirs lock").push(dir);
}

/// A child process that is killed when this guard drops.
pub struct ChildGuard {
    name: String,
    child: Mutex<Child>,
}

/// Spawns `cmd` with its output appended to `log`, so that it dies with this process.
pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<ChildGuard> {
    register_exit_hook();
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("opening {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("opening {}", log.display())))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: only async-signal-safe calls between fork and exec.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .lock()
        .expect("spawner lock")
        .send(SpawnRequest {
            cmd,
            reply: reply_tx,
        })
        .expect("the spawner thread lives as long as the process");
    let child = reply_rx
        .recv()
        .expect("the spawner thread answers")
        .map_err(io_err(format!("starting {name}")))?;
    LIVE_PIDS.lock().expect("pid lock").insert(child.id());
    Ok(ChildGuard {
        name: name.to_owned(),
        child: Mutex::new(child),
    })
}

impl ChildGuard {
    /// The exit status, if the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child.lock().ok()?.try_wait().ok().flatten()
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.lock().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Kills the process (SIGTERM, then SIGKILL after a grace period) and reaps it.
    pub fn kill(&mut self) {
        let Ok(mut child) = self.child.lock() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
            while child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        LIVE_PIDS.lock().map(|mut p| p.remove(&child.id())).ok();
        let _ = &self.name;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

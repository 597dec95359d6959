//! The sample provider's cloud API (`guests/sample/backend.py`, Python's standard library
//! only) as a process on a free loopback port, for the sample's tests and the conformance kit.

fn test_repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("runtime/testenv sits two levels below the root")
        .to_path_buf()
}

/// The sample provider's cloud API (guests/sample/backend.py) on a free loopback port.
pub struct SampleBackend {
    pub endpoint: String,
    child: std::process::Child,
}

impl SampleBackend {
    pub fn start(token: &str) -> SampleBackend {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("python3")
            .arg(test_repo_root().join("guests/sample/backend.py"))
            .args(["--port", "0", "--token", token])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the sample backend (python3)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let endpoint = line
            .trim()
            .strip_prefix("listening on ")
            .expect("backend prints its address")
            .to_string();
        SampleBackend { endpoint, child }
    }

    /// The backend's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The backend's own view of its machines (not through the provider).
    pub fn machines(&self) -> Vec<serde_json::Value> {
        serde_json::from_value(self.debug("machines")).unwrap()
    }

    /// Every API request the backend received, as `METHOD PATH`, in order.
    pub fn requests(&self) -> Vec<String> {
        serde_json::from_value(self.debug("requests")).unwrap()
    }

    fn debug(&self, what: &str) -> serde_json::Value {
        let url = format!("{}/debug/{what}", self.endpoint);
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1]).read().decode())", &url])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for SampleBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A second testbed: its own etcd, API server, controllers, CSI stack and node (its MinIO
//! unused), in its own state dir — the other cluster of disaster-recovery tests, which share
//! only the first testbed's S3 server with it. Destroyed (processes, etcd data, volumes) by
//! [`SecondTestbed::destroy`] or when dropped.

use std::path::PathBuf;
use std::process::Command;

use crate::{Env, repo_root, testbed_up};

pub struct SecondTestbed {
    pub env: Env,
    dir: PathBuf,
    up: bool,
}

impl SecondTestbed {
    /// Starts one in a new state dir under the system's temporary directory.
    pub fn up(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "holdfast-testbed-{name}-{}",
            crate::random_suffix()
        ));
        // Its volumes are small: the sparse image need not be the first testbed's size.
        let vars = testbed_up(Some(&dir), &[("HOLDFAST_TESTBED_VOLUMES_SIZE", "2G")]);
        let env = Env::from_vars(repo_root(), &vars);
        SecondTestbed { env, dir, up: true }
    }

    /// Stops everything and removes the state dir, etcd's data included.
    pub fn destroy(&mut self) {
        if !self.up {
            return;
        }
        self.up = false;
        let ok = Command::new(repo_root().join("e2e/testbed"))
            .arg("down")
            .env("HOLDFAST_TESTBED_DIR", &self.dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "e2e/testbed down of {} failed", self.dir.display());
        assert!(!self.dir.exists(), "{} still exists", self.dir.display());
    }
}

impl Drop for SecondTestbed {
    fn drop(&mut self) {
        if self.up && std::env::var_os("HOLDFAST_E2E_KEEP").is_some() {
            eprintln!(
                "keeping the second testbed in {} (HOLDFAST_E2E_KEEP)",
                self.dir.display()
            );
            return;
        }
        if self.up {
            self.up = false;
            let _ = Command::new(repo_root().join("e2e/testbed"))
                .arg("down")
                .env("HOLDFAST_TESTBED_DIR", &self.dir)
                .status();
        }
    }
}

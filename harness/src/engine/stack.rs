//! The shipped `docker-compose.ha.yml`, up for real: `docker compose` with an env file of
//! fresh secrets, the stand-in images' variables (infra/scripts/local-images.sh --env),
//! and Traefik and Prometheus published on 127.0.0.1 ports chosen at run time.
//!
//! Grafana is left out (no package of it here): `up` names the services it starts, and
//! everything they depend on starts with them.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

use super::docker::docker_with;
use crate::process::free_port;

/// The compose file's own project name (`name: cartae-ha`): its networks and volumes carry
/// fixed names, so one stack runs at a time.
pub const PROJECT: &str = "cartae-ha";
pub const SERVICE: &str = "database-api";
/// What `up` starts: the replicas, the balancer and the monitoring, with their
/// dependencies (migrate, Patroni over etcd, Redis with its Sentinels, the socket proxy).
const SERVICES: [&str; 3] = ["database-api", "traefik", "prometheus"];

pub struct Stack {
    pub dir: PathBuf,
    pub env_file: PathBuf,
    pub https_port: u16,
    pub prometheus_port: u16,
}

fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The variables local-images.sh prints for the stand-ins that cannot carry the upstream
/// reference.
fn local_image_variables() -> anyhow::Result<String> {
    let script = crate::repo_root().join("infra/scripts/local-images.sh");
    let output = std::process::Command::new(&script)
        .arg("--env")
        .output()
        .with_context(|| format!("run {} --env", script.display()))?;
    if !output.status.success() {
        bail!("{} --env failed", script.display());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Stack {
    /// Writes the env file and removes whatever an earlier run left of the project; the
    /// stack is not started yet.
    pub async fn prepare(image: &str, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let https_port = free_port();
        let prometheus_port = free_port();
        let http_port = free_port();
        let env = format!(
            "POSTGRES_PASSWORD={}\nPOSTGRES_SUPERUSER_PASSWORD={}\nPOSTGRES_REPLICATION_PASSWORD={}\n\
             PATRONI_RESTAPI_PASSWORD={}\nREDIS_PASSWORD={}\nREDIS_SENTINEL_PASSWORD={}\n\
             JWT_SECRET={}\nGRAFANA_ADMIN_PASSWORD={}\nCARTAE_API_IMAGE={image}\n\
             TRAEFIK_HTTP_PORT=127.0.0.1:{http_port}\nTRAEFIK_HTTPS_PORT=127.0.0.1:{https_port}\n\
             PROMETHEUS_BIND=127.0.0.1\nPROMETHEUS_PORT={prometheus_port}\n\
             ALERTMANAGER_PORT={}\n{}",
            secret(),
            secret(),
            secret(),
            secret(),
            secret(),
            secret(),
            secret(),
            secret(),
            // Prometheus' dependency since issue 30; its UI port must not collide either.
            free_port(),
            local_image_variables()?
        );
        let env_file = dir.join("stack.env");
        std::fs::write(&env_file, env)?;
        let stack = Self {
            dir: dir.to_owned(),
            env_file,
            https_port,
            prometheus_port,
        };
        stack.remove().await?;
        Ok(stack)
    }

    /// `docker compose -f docker-compose.ha.yml --env-file ... ARGS`.
    pub async fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        self.compose_with(args, &[]).await
    }

    pub async fn compose_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let file = crate::repo_root().join("docker-compose.ha.yml");
        let file = file.to_string_lossy();
        let env_file = self.env_file.to_string_lossy();
        let mut all = vec!["compose", "-f", &file, "--env-file", &env_file];
        all.extend_from_slice(args);
        docker_with(&all, env).await
    }

    /// `up -d` of the stack without Grafana.
    pub async fn up(&self) -> anyhow::Result<()> {
        let mut args = vec!["up", "-d", "--no-build", "--pull", "never"];
        args.extend(SERVICES);
        self.compose(&args).await.map(drop)
    }

    /// `up -d --scale database-api=N` of the replicas alone, as an operator scales them;
    /// compose drains the replicas it removes.
    pub async fn scale(&self, replicas: usize) -> anyhow::Result<()> {
        let scale = format!("{SERVICE}={replicas}");
        self.compose(&[
            "up",
            "-d",
            "--no-build",
            "--no-recreate",
            "--scale",
            &scale,
            SERVICE,
        ])
        .await
        .map(drop)
    }

    /// The running replicas' container ids.
    pub async fn replicas(&self) -> anyhow::Result<Vec<String>> {
        let ids = self.compose(&["ps", "-q", SERVICE]).await?;
        Ok(ids.lines().map(str::to_owned).collect())
    }

    /// A service's one container id (pg-1, redis-1, traefik...).
    pub async fn container(&self, service: &str) -> anyhow::Result<String> {
        let id = self.compose(&["ps", "-q", service]).await?;
        id.lines()
            .next()
            .map(str::to_owned)
            .with_context(|| format!("no container for {service}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https_port)
    }

    pub fn prometheus_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.prometheus_port)
    }

    /// Saves every container's log in the run's folder.
    pub async fn save_logs(&self) {
        if let Ok(logs) = self.compose(&["logs", "--no-color", "--timestamps"]).await {
            let _ = std::fs::write(self.dir.join("compose.log"), logs);
        }
    }

    /// `down` with the volumes: nothing of the project is left, containers, networks or
    /// volumes.
    pub async fn remove(&self) -> anyhow::Result<()> {
        self.compose(&["down", "-v", "--remove-orphans", "--timeout", "5"])
            .await
            .map(drop)
    }
}

impl Drop for Stack {
    /// A test that panics still removes the stack (synchronously: no runtime in Drop).
    fn drop(&mut self) {
        let file = crate::repo_root().join("docker-compose.ha.yml");
        let _ = std::process::Command::new("/usr/bin/docker")
            .arg("compose")
            .arg("-f")
            .arg(file)
            .arg("--env-file")
            .arg(&self.env_file)
            .args(["down", "-v", "--remove-orphans", "--timeout", "5"])
            .output();
    }
}

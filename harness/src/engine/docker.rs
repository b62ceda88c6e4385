//! The Docker CLI, as an operator runs it: Debian's `docker` (it builds with BuildKit),
//! against the engine `DOCKER_HOST` names (scripts/engine.sh starts one and sets it).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Debian's CLI: the newer one at /usr/local/bin cannot build without buildx.
const CLI: &str = "/usr/bin/docker";

/// Runs `docker ARGS` and returns its standard output, trimmed; an error with its
/// standard error when it exits non-zero.
pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    docker_with(args, &[]).await
}

/// As [`docker`], with extra environment variables (`DOCKER_BUILDKIT`, compose's).
pub async fn docker_with(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(CLI)
        .args(args)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run docker {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "docker {} exited {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// One field of `docker inspect`, by Go template.
pub async fn inspect(target: &str, format: &str) -> anyhow::Result<String> {
    docker(&["inspect", "--format", format, target]).await
}

/// The container's Docker health status: `starting`, `healthy` or `unhealthy`.
pub async fn health(container: &str) -> anyhow::Result<String> {
    inspect(container, "{{.State.Health.Status}}").await
}

/// Polls `health` until it reads `wanted`; the statuses seen on the way, in order.
pub async fn wait_health(
    container: &str,
    wanted: &str,
    within: Duration,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + within;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let status = health(container).await?;
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == wanted {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            bail!("{container} not {wanted} within {within:?}: statuses seen {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The host port Docker published for a container's `port/tcp` on 127.0.0.1.
pub async fn published_port(container: &str, port: u16) -> anyhow::Result<u16> {
    let mapping = docker(&["port", container, &format!("{port}/tcp")]).await?;
    mapping
        .lines()
        .find_map(|line| line.strip_prefix("127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("{container}: no port {port} published on 127.0.0.1 ({mapping})"))
}

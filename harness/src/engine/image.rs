//! The service's image, built from the shipped Dockerfile with no edit.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::docker::{docker, docker_with};

/// What building the image measured.
#[derive(Debug, Clone)]
pub struct Built {
    pub tag: String,
    pub took: Duration,
    pub size_bytes: u64,
}

/// The machine's Rust as `major.minor`: local-images.sh made the builder stand-in from
/// this toolchain, under that tag.
fn rust_version() -> anyhow::Result<String> {
    let output = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .context("run rustc --version")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_whitespace()
        .nth(1)
        .context("rustc printed no version")?;
    Ok(version.split('.').take(2).collect::<Vec<_>>().join("."))
}

/// `docker build` of the repository's Dockerfile, tagged `tag`, with BuildKit (its cache
/// mounts) and the host's network (crates.io). `label` makes a distinct image from the
/// same sources, as a new release would be, at the cost of one layer.
pub async fn build(tag: &str, label: Option<&str>) -> anyhow::Result<Built> {
    let root = crate::repo_root();
    let context = root.to_string_lossy().into_owned();
    let rust = format!("RUST_VERSION={}", rust_version()?);
    let mut args = vec!["build", "--network=host", "--build-arg", &rust, "-t", tag];
    let release;
    if let Some(label) = label {
        release = format!("org.opencontainers.image.version={label}");
        args.extend(["--label", &release]);
    }
    args.push(&context);
    let started = Instant::now();
    docker_with(&args, &[("DOCKER_BUILDKIT", "1")]).await?;
    let took = started.elapsed();
    let size_bytes = docker(&["image", "inspect", "--format", "{{.Size}}", tag])
        .await?
        .parse()
        .context("image size")?;
    Ok(Built {
        tag: tag.to_owned(),
        took,
        size_bytes,
    })
}

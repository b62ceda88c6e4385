//! Where settings come from, and how one variable is read: parsed or refused with its
//! name; `*_FILE` variables (secrets mounted as files) read in place of the plain ones.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ConfigError;

/// Where settings come from. The process environment in production, a map in tests.
pub trait Source {
    fn get(&self, var: &str) -> Option<String>;
}

/// The process environment.
pub struct Environment;

impl Source for Environment {
    fn get(&self, var: &str) -> Option<String> {
        std::env::var(var).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, var: &str) -> Option<String> {
        HashMap::get(self, var).cloned()
    }
}

/// Reads one variable: `None` when unset or blank, an error when set but unparsable.
pub(super) fn parse<T: FromStr>(
    src: &dyn Source,
    var: &'static str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: fmt::Display,
{
    match src.get(var).map(|v| v.trim().to_owned()) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .parse::<T>()
            .map(Some)
            .map_err(|e| ConfigError::new(var, format!("cannot parse {v:?}: {e}"))),
    }
}

pub(super) fn parse_or<T: FromStr>(
    src: &dyn Source,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    Ok(parse(src, var)?.unwrap_or(default))
}

pub(super) fn string_or(src: &dyn Source, var: &str, default: &str) -> String {
    src.get(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

pub(super) fn millis(
    src: &dyn Source,
    var: &'static str,
    default: u64,
    min: u64,
) -> Result<Duration, ConfigError> {
    let ms: u64 = parse_or(src, var, default)?;
    if ms < min {
        return Err(ConfigError::new(
            var,
            format!("must be at least {min} ms, got {ms}"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

pub(super) fn port(src: &dyn Source, var: &'static str, default: u16) -> Result<u16, ConfigError> {
    // Port 0 asks the OS for a free port: tests rely on it.
    parse_or(src, var, default)
}

/// Secrets that may come from a file instead, `{VAR}_FILE` (Docker and Kubernetes secrets):
/// the environment, which whoever may inspect the container reads (a balancer's Docker
/// provider included), then holds only a path.
pub(super) const FILE_BACKED: &[(&str, &str)] = &[
    ("JWT_SECRET", "JWT_SECRET_FILE"),
    ("JWT_SECRET_PREVIOUS", "JWT_SECRET_PREVIOUS_FILE"),
    ("DATABASE_URL", "DATABASE_URL_FILE"),
    ("POSTGRES_PASSWORD", "POSTGRES_PASSWORD_FILE"),
    ("REDIS_URL", "REDIS_URL_FILE"),
    ("REDIS_PASSWORD", "REDIS_PASSWORD_FILE"),
    ("REDIS_SENTINEL_PASSWORD", "REDIS_SENTINEL_PASSWORD_FILE"),
];

/// A source with each `{VAR}_FILE` of [`FILE_BACKED`] read into `VAR`.
pub(super) struct WithSecretFiles<'a> {
    src: &'a dyn Source,
    read: HashMap<&'static str, String>,
}

impl Source for WithSecretFiles<'_> {
    fn get(&self, var: &str) -> Option<String> {
        self.read.get(var).cloned().or_else(|| self.src.get(var))
    }
}

impl<'a> WithSecretFiles<'a> {
    pub(super) fn read(src: &'a dyn Source) -> Result<Self, ConfigError> {
        let mut read = HashMap::new();
        for &(var, file_var) in FILE_BACKED {
            let Some(path) = set(src, file_var) else {
                continue;
            };
            if set(src, var).is_some() {
                return Err(ConfigError::new(
                    file_var,
                    format!("set {var} or {file_var}, not both"),
                ));
            }
            // The error names the path, never the content.
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::new(file_var, format!("cannot read {path}: {e}")))?;
            // `echo` and editors end the file with a newline that is no part of the secret.
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            read.insert(var, value.to_owned());
        }
        Ok(Self { src, read })
    }
}

/// A variable's value, trimmed; `None` when unset or blank.
pub(super) fn set(src: &dyn Source, var: &str) -> Option<String> {
    src.get(var)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

pub(super) fn read_file(var: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::new(var, format!("cannot read {path}: {e}")))
}

/// A PEM file holding at least one certificate.
pub(super) fn certificates_pem(var: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    let pem = read_file(var, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(var, format!("{path}: not a PEM certificate: {e}")))?;
    if certificates.is_empty() {
        return Err(ConfigError::new(
            var,
            format!("{path}: no PEM certificate in it"),
        ));
    }
    Ok(pem)
}

/// A PEM file holding a private key.
pub(super) fn private_key_pem(var: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    let pem = read_file(var, path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| ConfigError::new(var, format!("{path}: no PEM private key: {e}")))?;
    Ok(pem)
}

/// Reads a count that must be at least `min`.
pub(super) fn at_least<T>(
    src: &dyn Source,
    var: &'static str,
    default: T,
    min: T,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + fmt::Display + Copy,
    T::Err: fmt::Display,
{
    let value = parse_or(src, var, default)?;
    if value < min {
        return Err(ConfigError::new(
            var,
            format!("must be at least {min}, got {value}"),
        ));
    }
    Ok(value)
}

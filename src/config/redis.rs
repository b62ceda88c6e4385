//! Redis's settings: the URL, TLS, Sentinel and the pool.

use std::fmt;
use std::time::Duration;

use super::sentinel::{self, SentinelSettings};
use super::source::{certificates_pem, millis, parse_or, private_key_pem, set, string_or, Source};
use super::{ConfigError, Secret};

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Full connection URL; it may embed the password, hence a secret.
    pub url: Secret,
    /// The CA and client certificate of a `rediss://` URL, read and checked at start.
    pub tls: RedisTls,
    /// Upper bound for any single Redis call made on a request path.
    pub timeout: Duration,
    /// Sentinels that name the master; then the URL's host and port are not used.
    pub sentinel: Option<SentinelSettings>,
}

/// PEM contents for Redis over TLS. Without a CA, the platform's roots verify the server.
#[derive(Clone, Default)]
pub struct RedisTls {
    pub ca_cert: Option<Vec<u8>>,
    /// A client certificate and its key, for servers that ask for one.
    pub client: Option<(Vec<u8>, Secret)>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca_cert", &self.ca_cert.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl RedisTls {
    /// What the redis crate needs beyond the URL; `None` when the defaults do.
    pub fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca_cert.is_none() && self.client.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.expose().as_bytes().to_vec(),
                }),
            root_cert: self.ca_cert.clone(),
        })
    }
}

/// `REDIS_CA_CERT`, `REDIS_CLIENT_CERT` and `REDIS_CLIENT_KEY`, read and checked.
pub(super) fn redis_tls(src: &dyn Source) -> Result<RedisTls, ConfigError> {
    let ca_cert = set(src, "REDIS_CA_CERT")
        .map(|path| certificates_pem("REDIS_CA_CERT", &path))
        .transpose()?;
    let client = match (set(src, "REDIS_CLIENT_CERT"), set(src, "REDIS_CLIENT_KEY")) {
        (Some(cert), Some(key)) => {
            let key = private_key_pem("REDIS_CLIENT_KEY", &key)?;
            let key = String::from_utf8(key)
                .map_err(|_| ConfigError::new("REDIS_CLIENT_KEY", "not a PEM text file"))?;
            Some((
                certificates_pem("REDIS_CLIENT_CERT", &cert)?,
                Secret::new(key),
            ))
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "REDIS_CLIENT_KEY",
                "must be set with REDIS_CLIENT_CERT",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "REDIS_CLIENT_CERT",
                "must be set with REDIS_CLIENT_KEY",
            ))
        }
    };
    Ok(RedisTls { ca_cert, client })
}

/// Refuses TLS settings that the URL would silently ignore, and what rustls cannot do.
pub(super) fn check_redis_tls(
    url: &str,
    tls: &RedisTls,
    src: &dyn Source,
) -> Result<(), ConfigError> {
    let parsed = redis::parse_redis_url(url);
    let is_tls = parsed.as_ref().is_some_and(|u| u.scheme() == "rediss");
    if !is_tls {
        let given = ["REDIS_CA_CERT", "REDIS_CLIENT_CERT", "REDIS_CLIENT_KEY"]
            .into_iter()
            .find(|var| set(src, var).is_some());
        if let Some(var) = given {
            return Err(ConfigError::new(
                var,
                "needs TLS: set REDIS_URL to a rediss:// URL",
            ));
        }
        return Ok(());
    }
    if parsed.as_ref().and_then(|u| u.fragment()) == Some("insecure") {
        return Err(ConfigError::new(
            "REDIS_URL",
            "#insecure (no certificate check) is not supported; give the server's CA in REDIS_CA_CERT",
        ));
    }
    let client = match tls.certificates() {
        Some(certificates) => redis::Client::build_with_tls(url, certificates),
        None => redis::Client::open(url),
    };
    client
        .map(|_| ())
        .map_err(|e| ConfigError::new("REDIS_URL", format!("unusable with TLS: {e}")))
}

pub(super) fn redis(src: &dyn Source) -> Result<RedisSettings, ConfigError> {
    let url = match src.get("REDIS_URL").filter(|v| !v.trim().is_empty()) {
        Some(url) => {
            let url = url.trim().to_owned();
            redis::parse_redis_url(&url)
                .filter(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"))
                .ok_or_else(|| ConfigError::new("REDIS_URL", "not a redis:// URL"))?;
            url
        }
        None => {
            let host = string_or(src, "REDIS_HOST", "localhost");
            let port: u16 = parse_or(src, "REDIS_PORT", 6379)?;
            let db: u8 = parse_or(src, "REDIS_DB", 0)?;
            if db > 15 {
                return Err(ConfigError::new(
                    "REDIS_DB",
                    format!("must be 0 to 15, got {db}"),
                ));
            }
            match src.get("REDIS_PASSWORD").filter(|p| !p.is_empty()) {
                Some(pw) => format!("redis://:{}@{host}:{port}/{db}", percent_encode(&pw)),
                None => format!("redis://{host}:{port}/{db}"),
            }
        }
    };
    let tls = redis_tls(src)?;
    check_redis_tls(&url, &tls, src)?;
    let sentinel = sentinel::sentinels(src, &url)?;
    Ok(RedisSettings {
        url: Secret::new(url),
        tls,
        timeout: millis(src, "REDIS_TIMEOUT_MS", 250, 1)?,
        sentinel,
    })
}

/// Passwords may hold any byte; the URL form needs them escaped.
pub(super) fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

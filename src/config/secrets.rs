//! Refusing signing secrets an attacker could know or guess.
//!
//! `JWT_SECRET` signs every token: whoever knows it can forge a token for any user. So the
//! service refuses to start with a value shipped in an example (they are public), or with
//! one that is visibly not random. The checks are deliberately crude, and err toward
//! accepting: they catch placeholders, repetitions, sequences and tiny alphabets, and any
//! output of `openssl rand -base64 24` or `openssl rand -hex 16` (or longer) passes. A
//! sentence of words is not caught: the documentation says to generate the value.

/// Shorter secrets are refused outright.
pub const MIN_LEN: usize = 32;
/// The least estimated entropy accepted. A 32-character random hex string, 128 real bits,
/// estimates at about 110 (rarely below 95): the margin keeps every real one passing.
const MIN_BITS: f64 = 80.0;
/// A repeated run this long means a pattern: a random base64 secret has one by chance with
/// odds of about 1 in 10^12, a random hex one about 1 in 10^6.
const REPEAT_LEN: usize = 8;
/// Words that only placeholders contain.
const PLACEHOLDER_MARKERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "example",
    "placeholder",
    "replace",
];
/// Values this repository has shipped in examples, scripts or docs: public, hence refused
/// even where they would pass the other checks.
const SHIPPED: &[&str] = &[
    "change-me-to-a-random-secret-of-at-least-32-characters",
    "dev-only-secret-change-me-0123456789abcdef",
];

/// Why `secret` must not sign tokens, if it must not.
pub fn weakness(secret: &str) -> Option<String> {
    let generate = "generate one with: openssl rand -base64 48";
    if secret.len() < MIN_LEN {
        return Some(format!("must be at least {MIN_LEN} characters; {generate}"));
    }
    let lower = secret.to_ascii_lowercase();
    if SHIPPED.contains(&secret) || PLACEHOLDER_MARKERS.iter().any(|m| lower.contains(m)) {
        return Some(format!(
            "is a published example value, not a secret; {generate}"
        ));
    }
    if has_repeat(secret.as_bytes()) || has_sequence(secret.as_bytes()) {
        return Some(format!("repeats a pattern, so it is guessable; {generate}"));
    }
    let bits = estimated_bits(secret);
    if bits < MIN_BITS {
        return Some(format!(
            "has too little entropy (about {bits:.0} bits, at least {MIN_BITS:.0} needed); {generate}"
        ));
    }
    None
}

/// Length times the Shannon entropy of the character frequencies.
fn estimated_bits(secret: &str) -> f64 {
    let mut counts = std::collections::HashMap::<char, usize>::new();
    let mut total = 0usize;
    for c in secret.chars() {
        *counts.entry(c).or_default() += 1;
        total += 1;
    }
    let n = total as f64;
    let per_char: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum();
    per_char * n
}

fn has_repeat(bytes: &[u8]) -> bool {
    let mut seen = std::collections::HashSet::new();
    bytes.windows(REPEAT_LEN).any(|w| !seen.insert(w))
}

/// `abcdefgh`, `87654321`: a run of consecutive characters.
fn has_sequence(bytes: &[u8]) -> bool {
    bytes.windows(REPEAT_LEN).any(|w| {
        let step = i16::from(w[1]) - i16::from(w[0]);
        step.abs() == 1
            && w.windows(2)
                .all(|p| i16::from(p[1]) - i16::from(p[0]) == step)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_patterns_are_refused() {
        for weak in [
            "short",
            "change-me-to-a-random-secret-of-at-least-32-characters",
            "dev-only-secret-change-me-0123456789abcdef",
            "test-secret-test-secret-test-secret-0123",
            "0123456789abcdef0123456789abcdef",
            "abcdefghijklmnopqrstuvwxyz012345",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "01101001011100101100101011010011010010110",
        ] {
            assert!(weakness(weak).is_some(), "{weak:?} was accepted");
        }
    }

    #[test]
    fn generated_secrets_pass() {
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..2)
                .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
                .collect();
            for len in [16, 32] {
                let hex: String = bytes[..len].iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(weakness(&hex), None, "{hex}");
            }
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes[..24]);
            assert_eq!(weakness(&b64), None, "{b64}");
        }
    }
}

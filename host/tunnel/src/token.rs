//! Bootstrap and join tokens.
//!
//! The bootstrap token follows Kubernetes' shape (`[a-z0-9]{6}.[a-z0-9]{16}`) so operators
//! recognise it and the id can be logged while the secret never is. The join token wraps it
//! K3s-style with the CA's SHA-256 so an agent can trust the server before it has any
//! certificate: `K10<ca sha256 hex>::<id>.<secret>`.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const JOIN_PREFIX: &str = "K10";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("bootstrap token must look like <id>.<secret> (6 and 16 characters of [a-z0-9])")]
    BootstrapShape,
    #[error("join token must start with {JOIN_PREFIX}")]
    JoinPrefix,
    #[error("join token must look like K10<ca sha256 hex>::<id>.<secret>")]
    JoinShape,
    #[error("join token's CA hash must be 64 hex characters (sha256)")]
    CaHash,
}

/// A Kubernetes-style bootstrap token. `Debug` hides the secret so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
}

impl BootstrapToken {
    /// A fresh token from the thread RNG (a CSPRNG in rand 0.9): ~82 bits of secret.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        let id = pick(ID_LEN);
        let secret = pick(SECRET_LEN);
        Self { id, secret }
    }

    /// Compares the secret in constant time, so a validator looking a token up by id does not
    /// leak how many leading characters of a guess were right.
    pub fn secret_matches(&self, expected: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), expected.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

fn valid_part(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

impl FromStr for BootstrapToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        let (id, secret) = s.trim().split_once('.').ok_or(TokenError::BootstrapShape)?;
        if !valid_part(id, ID_LEN) || !valid_part(secret, SECRET_LEN) {
            return Err(TokenError::BootstrapShape);
        }
        Ok(Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What an agent is handed to join: the CA pin plus the bootstrap token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the CA certificate's DER.
    pub ca_hash: String,
    pub token: BootstrapToken,
}

impl FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        let rest = s
            .trim()
            .strip_prefix(JOIN_PREFIX)
            .ok_or(TokenError::JoinPrefix)?;
        let (hash, token) = rest.split_once("::").ok_or(TokenError::JoinShape)?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::CaHash);
        }
        Ok(Self {
            ca_hash: hash.to_ascii_lowercase(),
            token: token.parse()?,
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JOIN_PREFIX}{}::{}", self.ca_hash, self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn generated_tokens_round_trip_and_differ() {
        let a = BootstrapToken::generate();
        let b = BootstrapToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.id.len(), 6);
        assert_eq!(a.secret.len(), 16);
        assert_eq!(a.to_string().parse::<BootstrapToken>().unwrap(), a);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t: BootstrapToken = "abcdef.0123456789abcdef".parse().unwrap();
        let dbg = format!("{t:?}");
        assert!(dbg.contains("abcdef") && !dbg.contains("0123456789abcdef"));
    }

    #[test]
    fn bootstrap_rejects_bad_shapes() {
        for bad in [
            "",
            "abcdef",
            "abcdef.",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "ABCDEF.0123456789abcdef",
            "abc-ef.0123456789abcdef",
            "abcdef.0123456789abcdef.x",
        ] {
            assert_eq!(
                bad.parse::<BootstrapToken>(),
                Err(TokenError::BootstrapShape),
                "{bad}"
            );
        }
    }

    #[test]
    fn secret_comparison() {
        let t: BootstrapToken = "abcdef.0123456789abcdef".parse().unwrap();
        assert!(t.secret_matches("0123456789abcdef"));
        assert!(!t.secret_matches("0123456789abcdeg"));
        assert!(!t.secret_matches("0123"));
    }

    #[test]
    fn join_token_round_trip() {
        let s = format!("K10{HASH}::abcdef.0123456789abcdef");
        let j: JoinToken = s.parse().unwrap();
        assert_eq!(j.ca_hash, HASH);
        assert_eq!(j.token.id, "abcdef");
        assert_eq!(j.to_string(), s);
        // Upper-case hex (as some tools print it) is accepted and normalised.
        let upper = format!("K10{}::abcdef.0123456789abcdef", HASH.to_uppercase());
        assert_eq!(upper.parse::<JoinToken>().unwrap(), j);
    }

    #[test]
    fn join_token_errors_are_specific() {
        let cases = [
            ("abcdef.0123456789abcdef", TokenError::JoinPrefix),
            (
                &format!("K10{HASH}abcdef.0123456789abcdef"),
                TokenError::JoinShape,
            ),
            ("K10abc::abcdef.0123456789abcdef", TokenError::CaHash),
            (
                &format!("K10{}::abcdef.0123456789abcdef", "z".repeat(64)),
                TokenError::CaHash,
            ),
            (&format!("K10{HASH}::abcdef"), TokenError::BootstrapShape),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<JoinToken>(), Err(want), "{input}");
        }
    }
}

//! API tokens: random, shown once, stored only as SHA-256 hashes.
//!
//! A token is `stw_` followed by 64 hex digits (32 random bytes). Tokens carry
//! enough entropy that a fast hash is the right tool (as for other API tokens):
//! the database never holds anything that authenticates.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{StateError, Store};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Status, history, metrics, events.
    Read,
    /// Everything `read` may, plus triggering actions (backups, deploys, scaling…).
    Operate,
}

impl Scope {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
        }
    }
    /// Parses `read` or `operate`.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "operate" => Some(Scope::Operate),
            _ => None,
        }
    }
}

/// A stored token (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its name, unique.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// Created (Unix ms).
    pub created: i64,
    /// Last accepted (Unix ms, updated at most once a minute).
    pub last_used: Option<i64>,
    /// Revoked (Unix ms).
    pub revoked: Option<i64>,
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Name taken.
    #[error("a token named `{0}` already exists (revoked tokens keep their name)")]
    Exists(String),
    /// Bad name.
    #[error("token names use letters, digits, `-`, `_` and `.` (1 to 64 characters)")]
    BadName,
    /// No randomness.
    #[error("cannot get random bytes from the operating system: {0}")]
    Random(String),
    /// The database failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// SHA-256 of a presented token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        name: r.get(0)?,
        scope: Scope::parse(&r.get::<_, String>(1)?).unwrap_or(Scope::Read),
        created: r.get(2)?,
        last_used: r.get(3)?,
        revoked: r.get(4)?,
    })
}

/// API tokens: the state boundary of the API's authentication.
pub trait Tokens: Send + Sync {
    /// Creates a token and returns its secret, which is not stored and cannot be shown again.
    fn create_token(&self, name: &str, scope: Scope, now: i64) -> Result<String, TokenError>;

    /// Every token, oldest first.
    fn tokens(&self) -> Result<Vec<TokenInfo>, StateError>;

    /// Revokes a token by name; false when no live token has that name.
    fn revoke_token(&self, name: &str, now: i64) -> Result<bool, StateError>;

    /// The live token with this hash, if any; notes its use (at most once a minute).
    fn authenticate(&self, hash: &[u8], now: i64) -> Result<Option<TokenInfo>, StateError>;

    /// Whether any live token exists.
    fn has_tokens(&self) -> Result<bool, StateError>;
}

impl Tokens for Store {
    fn create_token(&self, name: &str, scope: Scope, now: i64) -> Result<String, TokenError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(TokenError::BadName);
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
        let secret = format!(
            "stw_{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let conn = self.writer();
        match conn.execute(
            "INSERT INTO tokens (name, scope, hash, created) VALUES (?1, ?2, ?3, ?4)",
            params![name, scope.as_str(), token_hash(&secret), now],
        ) {
            Ok(_) => Ok(secret),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(TokenError::Exists(name.to_string()))
            }
            Err(e) => Err(self.err(e).into()),
        }
    }

    fn tokens(&self) -> Result<Vec<TokenInfo>, StateError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT name, scope, created, last_used, revoked FROM tokens ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn revoke_token(&self, name: &str, now: i64) -> Result<bool, StateError> {
        let conn = self.writer();
        conn.execute(
            "UPDATE tokens SET revoked = ?2 WHERE name = ?1 AND revoked IS NULL",
            params![name, now],
        )
        .map(|n| n > 0)
        .map_err(|e| self.err(e))
    }

    fn authenticate(&self, hash: &[u8], now: i64) -> Result<Option<TokenInfo>, StateError> {
        let found = {
            let conn = self.reader();
            conn.query_row(
                "SELECT name, scope, created, last_used, revoked FROM tokens WHERE hash = ?1 AND revoked IS NULL",
                params![hash],
                row,
            )
            .optional()
            .map_err(|e| self.err(e))?
        };
        if let Some(t) = &found
            && t.last_used.is_none_or(|u| now - u > 60_000)
        {
            let conn = self.writer();
            conn.execute(
                "UPDATE tokens SET last_used = ?2 WHERE hash = ?1",
                params![hash, now],
            )
            .map_err(|e| self.err(e))?;
        }
        Ok(found)
    }

    fn has_tokens(&self) -> Result<bool, StateError> {
        let conn = self.reader();
        conn.query_row(
            "SELECT count(*) FROM tokens WHERE revoked IS NULL",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| self.err(e))
    }
}

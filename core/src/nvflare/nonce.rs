//! [`NonceBook`]: client nonces the agent issued, each bound to the caller (uid) and the key,
//! usable once, within [`NONCE_LIFETIME`]. Used nonces are remembered until they expire, so a
//! replay is told apart from a nonce that never existed. Bounded: the oldest entries go first.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::ChallengeError;
use crate::key::KeyId;

/// How long a client nonce stays valid: NVFlare's server drops its registration session
/// after `max_reg_duration` (60 s by default), so a later reply is useless anyway.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(60);

/// Most nonces outstanding at once (one per registration attempt; a site makes a handful).
const MAX_NONCES: usize = 4096;

struct Entry {
    caller: u32,
    key: KeyId,
    issued: Instant,
    used: bool,
}

/// Outstanding client nonces.
#[derive(Default)]
pub struct NonceBook {
    entries: HashMap<String, Entry>,
    order: VecDeque<String>,
}

impl NonceBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Issues a fresh nonce (a uuid4 string, as NVFlare's client makes) for `caller` and `key`.
    pub fn issue(&mut self, caller: u32, key: &KeyId, now: Instant) -> String {
        self.forget_expired(now);
        while self.order.len() >= MAX_NONCES {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
        let nonce = uuid::Uuid::new_v4().to_string();
        self.entries.insert(nonce.clone(), Entry { caller, key: key.clone(), issued: now, used: false });
        self.order.push_back(nonce.clone());
        nonce
    }

    /// Consumes `nonce` for `caller` and `key`.
    ///
    /// # Errors
    /// Unknown, expired, replayed, or issued to someone else.
    pub fn consume(&mut self, nonce: &str, caller: u32, key: &KeyId, now: Instant) -> Result<(), ChallengeError> {
        let shown: String = nonce.chars().take(40).collect();
        let entry = self.entries.get_mut(nonce).ok_or(ChallengeError::UnknownNonce(shown))?;
        if entry.caller != caller || &entry.key != key {
            return Err(ChallengeError::NonceNotYours);
        }
        if now.duration_since(entry.issued) > NONCE_LIFETIME {
            return Err(ChallengeError::ExpiredNonce(NONCE_LIFETIME.as_secs()));
        }
        if entry.used {
            return Err(ChallengeError::ReplayedNonce);
        }
        entry.used = true;
        Ok(())
    }

    fn forget_expired(&mut self, now: Instant) {
        // Keep expired entries one extra lifetime so "expired" is reported rather than "unknown".
        while let Some(oldest) = self.order.front() {
            let stale = self.entries.get(oldest).is_none_or(|e| now.duration_since(e.issued) > 2 * NONCE_LIFETIME);
            if !stale {
                break;
            }
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyId {
        KeyId::new("site-1").unwrap()
    }

    #[test]
    fn a_nonce_is_a_uuid_and_works_once() {
        let mut book = NonceBook::new();
        let t = Instant::now();
        let n = book.issue(1000, &key(), t);
        assert_eq!(n.len(), 36);
        assert!(uuid::Uuid::parse_str(&n).is_ok());
        assert_eq!(book.consume(&n, 1000, &key(), t), Ok(()));
        assert_eq!(book.consume(&n, 1000, &key(), t), Err(ChallengeError::ReplayedNonce));
    }

    #[test]
    fn unknown_expired_and_foreign_nonces_are_refused_distinctly() {
        let mut book = NonceBook::new();
        let t = Instant::now();
        assert!(matches!(book.consume("nope", 1, &key(), t), Err(ChallengeError::UnknownNonce(_))));
        let n = book.issue(1, &key(), t);
        assert_eq!(book.consume(&n, 2, &key(), t), Err(ChallengeError::NonceNotYours));
        assert_eq!(book.consume(&n, 1, &KeyId::new("other").unwrap(), t), Err(ChallengeError::NonceNotYours));
        let later = t + NONCE_LIFETIME + Duration::from_secs(1);
        assert_eq!(book.consume(&n, 1, &key(), later), Err(ChallengeError::ExpiredNonce(60)));
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book = NonceBook::new();
        let t = Instant::now();
        let first = book.issue(1, &key(), t);
        for _ in 0..MAX_NONCES {
            book.issue(1, &key(), t);
        }
        assert_eq!(book.entries.len(), MAX_NONCES);
        assert!(matches!(book.consume(&first, 1, &key(), t), Err(ChallengeError::UnknownNonce(_))));
    }
}

//! [`NonceBook`]: client nonces the agent issued, each bound to the caller (uid) and the key,
//! usable once, within [`NONCE_LIFETIME`]. Used nonces are remembered until they expire, so a
//! replay is told apart from a nonce that never existed.
//!
//! Bounded per owner (caller and key) and in total, so that one caller cannot push out
//! another's pending nonce: an owner over its own bound loses its own oldest nonce, and when
//! the whole book is full the owner holding the most nonces loses its oldest.
//!
//! Also [`check_server_nonce`]: the server nonce must look like the one NVFlare's server
//! makes (`str(uuid.uuid4())`), so the agent signs `client_cn + server_nonce` for nothing else;
//! [`check_uuid4`] is the same shape check for the server side's client nonces and tokens.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::ChallengeError;
use crate::key::KeyId;

/// How long a client nonce stays valid: NVFlare's server drops its registration session
/// after `max_reg_duration` (60 s by default), so a later reply is useless anyway.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(60);

/// Most nonces outstanding at once, over all owners.
const MAX_NONCES: usize = 4096;

/// Most nonces one owner (caller and key) holds. A client that re-challenges every 2 s (as
/// NVFlare's does while the server is unreachable) holds about 60 within the two lifetimes a
/// nonce is remembered.
const MAX_NONCES_PER_OWNER: usize = 128;

/// Who a nonce was issued to: the caller's uid and the key.
type Owner = (u32, KeyId);

struct Entry {
    owner: Owner,
    issued: Instant,
    used: bool,
}

/// Outstanding client nonces.
#[derive(Default)]
pub struct NonceBook {
    entries: HashMap<String, Entry>,
    /// Each owner's nonces, oldest first.
    by_owner: HashMap<Owner, VecDeque<String>>,
}

impl NonceBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Issues a fresh nonce (a uuid4 string, as NVFlare's client makes) for `caller` and `key`.
    pub fn issue(&mut self, caller: u32, key: &KeyId, now: Instant) -> String {
        self.forget_expired(now);
        let owner = (caller, key.clone());
        if self.by_owner.get(&owner).is_some_and(|q| q.len() >= MAX_NONCES_PER_OWNER) {
            self.forget_oldest_of(&owner);
        }
        if self.entries.len() >= MAX_NONCES {
            if let Some(largest) = self.by_owner.iter().max_by_key(|(_, q)| q.len()).map(|(o, _)| o.clone()) {
                self.forget_oldest_of(&largest);
            }
        }
        let nonce = uuid::Uuid::new_v4().to_string();
        self.entries.insert(nonce.clone(), Entry { owner: owner.clone(), issued: now, used: false });
        self.by_owner.entry(owner).or_default().push_back(nonce.clone());
        nonce
    }

    /// Consumes `nonce` for `caller` and `key`.
    ///
    /// # Errors
    /// Unknown, expired, replayed, or issued to someone else.
    pub fn consume(&mut self, nonce: &str, caller: u32, key: &KeyId, now: Instant) -> Result<(), ChallengeError> {
        let shown: String = nonce.chars().take(40).collect();
        let entry = self.entries.get_mut(nonce).ok_or(ChallengeError::UnknownNonce(shown))?;
        if entry.owner.0 != caller || &entry.owner.1 != key {
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

    fn forget_oldest_of(&mut self, owner: &Owner) {
        if let Some(queue) = self.by_owner.get_mut(owner) {
            if let Some(old) = queue.pop_front() {
                self.entries.remove(&old);
            }
            if queue.is_empty() {
                self.by_owner.remove(owner);
            }
        }
    }

    fn forget_expired(&mut self, now: Instant) {
        // Keep expired entries one extra lifetime so "expired" is reported rather than "unknown".
        let entries = &mut self.entries;
        self.by_owner.retain(|_, queue| {
            while let Some(oldest) = queue.front() {
                let stale = entries.get(oldest).is_none_or(|e| now.duration_since(e.issued) > 2 * NONCE_LIFETIME);
                if !stale {
                    break;
                }
                if let Some(old) = queue.pop_front() {
                    entries.remove(&old);
                }
            }
            !queue.is_empty()
        });
    }
}

/// Checks that `nonce` is shaped like the server nonce NVFlare's server sends,
/// `str(uuid.uuid4())`: see [`check_uuid4`].
///
/// # Errors
/// [`ChallengeError::Malformed`] for anything else.
pub fn check_server_nonce(nonce: &str) -> Result<(), ChallengeError> {
    check_uuid4(nonce, "server nonce (NVFlare sends a lowercase uuid4 string, 36 characters)")
}

/// Checks that `value` is shaped like NVFlare's nonces and tokens, `str(uuid.uuid4())`: 36
/// characters, lowercase hex in 8-4-4-4-12 groups, version 4 and the RFC 4122 variant
/// (`8`, `9`, `a` or `b`). `what` names the field in the error.
///
/// # Errors
/// [`ChallengeError::Malformed`] naming `what`, for anything else.
pub fn check_uuid4(value: &str, what: &'static str) -> Result<(), ChallengeError> {
    let b = value.as_bytes();
    let shaped = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            14 => c == b'4',
            19 => matches!(c, b'8' | b'9' | b'a' | b'b'),
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        });
    if shaped {
        Ok(())
    } else {
        Err(ChallengeError::Malformed(what))
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
    fn an_owner_over_its_bound_loses_its_own_oldest_nonce() {
        let mut book = NonceBook::new();
        let t = Instant::now();
        let first = book.issue(1, &key(), t);
        for _ in 0..MAX_NONCES_PER_OWNER {
            book.issue(1, &key(), t);
        }
        assert_eq!(book.entries.len(), MAX_NONCES_PER_OWNER);
        assert!(matches!(book.consume(&first, 1, &key(), t), Err(ChallengeError::UnknownNonce(_))));
    }

    #[test]
    fn a_flood_by_one_caller_does_not_evict_another_callers_nonce() {
        let mut book = NonceBook::new();
        let t = Instant::now();
        let mine = book.issue(1000, &key(), t);
        // Caller 2000 floods with one key, then with many keys (each key its own owner).
        for _ in 0..2 * MAX_NONCES {
            book.issue(2000, &key(), t);
        }
        for n in 0..2 * MAX_NONCES {
            book.issue(2000, &KeyId::new(&format!("k{}", n % 64)).unwrap(), t);
        }
        assert!(book.entries.len() <= MAX_NONCES);
        assert_eq!(book.consume(&mine, 1000, &key(), t), Ok(()));
    }

    #[test]
    fn the_whole_book_is_bounded_and_the_largest_owner_gives_way() {
        let mut book = NonceBook::new();
        let t = Instant::now();
        let mut firsts = Vec::new();
        for caller in 0..(MAX_NONCES / MAX_NONCES_PER_OWNER) as u32 {
            firsts.push(book.issue(caller, &key(), t));
            for _ in 1..MAX_NONCES_PER_OWNER {
                book.issue(caller, &key(), t);
            }
        }
        assert_eq!(book.entries.len(), MAX_NONCES);
        let newcomer = book.issue(99_999, &key(), t);
        assert_eq!(book.entries.len(), MAX_NONCES);
        let evicted = firsts.iter().filter(|n| !book.entries.contains_key(*n)).count();
        assert_eq!(evicted, 1, "exactly one of the full owners gave way");
        assert_eq!(book.consume(&newcomer, 99_999, &key(), t), Ok(()));
    }

    #[test]
    fn expired_nonces_are_forgotten_after_two_lifetimes() {
        let mut book = NonceBook::new();
        let t = Instant::now();
        let old = book.issue(1, &key(), t);
        book.issue(2, &key(), t + 2 * NONCE_LIFETIME + Duration::from_secs(1));
        assert!(matches!(book.consume(&old, 1, &key(), t), Err(ChallengeError::UnknownNonce(_))));
        assert_eq!(book.by_owner.len(), 1);
    }

    #[test]
    fn only_a_lowercase_uuid4_is_a_server_nonce() {
        assert_eq!(check_server_nonce(&uuid::Uuid::new_v4().to_string()), Ok(()));
        assert_eq!(check_server_nonce("0b4d07b5-5c3c-4b0e-9c5e-2f1d2a7f6c11"), Ok(()));
        for bad in [
            "",
            "n",
            "0B4D07B5-5C3C-4B0E-9C5E-2F1D2A7F6C11",   // upper case
            "0b4d07b5-5c3c-1b0e-9c5e-2f1d2a7f6c11",   // version 1
            "0b4d07b5-5c3c-4b0e-cc5e-2f1d2a7f6c11",   // variant 110x
            "0b4d07b55c3c4b0e9c5e2f1d2a7f6c11",       // no hyphens
            "{0b4d07b5-5c3c-4b0e-9c5e-2f1d2a7f6c11}", // braced
            "0b4d07b5-5c3c-4b0e-9c5e-2f1d2a7f6c1g",
            "0b4d07b5-5c3c-4b0e-9c5e-2f1d2a7f6c11\n",
        ] {
            assert!(matches!(check_server_nonce(bad), Err(ChallengeError::Malformed(_))), "{bad:?}");
        }
    }
}

//! The pool with a fake store whose `sign` of key `stuck` blocks like a hung device call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use keyward_core::private_key::PrivateKeyMaterial;
use keyward_core::{KeyAlgorithm, KeyId, KeyInfo, KeyStore, PublicKey, SignProfile, StoreError, StoreInfo};
use zeroize::Zeroizing;

use super::SessionPool;

/// Released once; until then, signing with key `stuck` blocks.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

struct FakeStore {
    gate: Arc<Gate>,
    signed: Arc<AtomicUsize>,
}

impl KeyStore for FakeStore {
    fn info(&self) -> StoreInfo {
        StoreInfo { backend: "fake", device: "fake".into() }
    }
    fn list(&mut self) -> Result<Vec<KeyInfo>, StoreError> {
        Ok(Vec::new())
    }
    fn generate(&mut self, _: &KeyId, _: KeyAlgorithm) -> Result<KeyInfo, StoreError> {
        Err(StoreError::Unsupported { what: "fake".into() })
    }
    fn import(&mut self, _: &KeyId, _: &PrivateKeyMaterial) -> Result<KeyInfo, StoreError> {
        Err(StoreError::Unsupported { what: "fake".into() })
    }
    fn public_key(&mut self, _: &KeyId) -> Result<PublicKey, StoreError> {
        Err(StoreError::Unsupported { what: "fake".into() })
    }
    fn sign(&mut self, id: &KeyId, _: SignProfile, msg: &[u8]) -> Result<Vec<u8>, StoreError> {
        if id.as_str() == "stuck" {
            self.gate.wait();
        }
        self.signed.fetch_add(1, Ordering::SeqCst);
        Ok(msg.to_vec())
    }
    fn decrypt(&mut self, _: &KeyId, _: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        Err(StoreError::Unsupported { what: "fake".into() })
    }
    fn check(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn pool(size: usize, max_waiting: usize) -> (Arc<SessionPool>, Arc<Gate>, Arc<AtomicUsize>) {
    let gate = Arc::new(Gate::default());
    let signed = Arc::new(AtomicUsize::new(0));
    let stores = (0..size)
        .map(|_| Box::new(FakeStore { gate: Arc::clone(&gate), signed: Arc::clone(&signed) }) as Box<dyn KeyStore>)
        .collect();
    (Arc::new(SessionPool::new(stores, max_waiting)), gate, signed)
}

fn sign(pool: &SessionPool, key: &str, wait: Duration) -> Result<Vec<u8>, StoreError> {
    let mut session = pool.acquire(Instant::now() + wait, wait)?;
    session.store().sign(&KeyId::new(key).unwrap(), SignProfile::Nvflare, b"m")
}

#[test]
fn a_hung_session_leaves_the_others_serving_and_a_waiter_gets_timeout_then_busy_past_the_queue() {
    let (pool, gate, signed) = pool(2, 1);
    let stuck = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || sign(&pool, "stuck", Duration::from_secs(5)))
    };
    while pool.idle.lock().unwrap().stores.len() != 1 {
        std::thread::yield_now();
    }
    // One session is stuck; the other serves every other request.
    for _ in 0..20 {
        assert_eq!(sign(&pool, "fine", Duration::from_millis(100)).unwrap(), b"m");
    }
    // Hold the last session: a waiter times out at its deadline...
    let held = pool.acquire(Instant::now() + Duration::from_secs(1), Duration::from_secs(1)).unwrap();
    let started = Instant::now();
    assert!(matches!(sign(&pool, "fine", Duration::from_millis(200)), Err(StoreError::Timeout { millis: 200 })));
    assert!(started.elapsed() >= Duration::from_millis(200) && started.elapsed() < Duration::from_secs(2));
    // ...and past `max_waiting` waiters, `busy` at once.
    let waiter = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || sign(&pool, "fine", Duration::from_secs(5)))
    };
    while pool.idle.lock().unwrap().waiting != 1 {
        std::thread::yield_now();
    }
    assert!(matches!(sign(&pool, "fine", Duration::from_secs(5)), Err(StoreError::Busy)));
    // A session given back wakes the waiter.
    drop(held);
    assert_eq!(waiter.join().unwrap().unwrap(), b"m");
    gate.release();
    assert_eq!(stuck.join().unwrap().unwrap(), b"m");
    assert_eq!(signed.load(Ordering::SeqCst), 22);
    pool.close();
    assert!(matches!(sign(&pool, "fine", Duration::from_millis(10)), Err(StoreError::Unavailable { .. })));
}

//! Signing keys for tests, generators and tools: deterministic or random keypairs that build
//! signed events.

use std::fmt;

use secp256k1::Keypair;
use secp256k1::global::SECP256K1;
use sha2::{Digest, Sha256};

use super::error::EventError;
use super::event::Event;
use super::types::{EventId, Pubkey, Signature};

/// A secp256k1 keypair that signs events (BIP-340). `Debug` shows only the public key.
#[derive(Clone)]
pub struct Keys {
    keypair: Keypair,
}

impl Keys {
    /// Keys from a 32-byte secret; fails if it is zero or not below the curve order.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Result<Keys, EventError> {
        Keypair::from_seckey_byte_array(SECP256K1, *secret)
            .map(|keypair| Keys { keypair })
            .map_err(|_| EventError::bad_field("secret key is zero or not below the curve order"))
    }

    /// Deterministic keys: the first sha256(seed LE bytes || counter LE bytes), counter = 0, 1,
    /// ..., that is a valid secret key. Invalid hashes occur with probability about 2^-128.
    pub fn from_seed(seed: u64) -> Keys {
        let mut counter: u64 = 0;
        loop {
            let mut hasher = Sha256::new();
            hasher.update(seed.to_le_bytes());
            hasher.update(counter.to_le_bytes());
            let secret: [u8; 32] = hasher.finalize().into();
            if let Ok(keys) = Keys::from_secret_bytes(&secret) {
                return keys;
            }
            counter = counter.wrapping_add(1);
        }
    }

    /// Fresh random keys from the thread's cryptographic RNG.
    pub fn generate() -> Keys {
        Keys {
            keypair: Keypair::new(SECP256K1, &mut secp256k1::rand::rng()),
        }
    }

    /// The x-only public key.
    pub fn pubkey(&self) -> Pubkey {
        Pubkey(self.keypair.x_only_public_key().0.serialize())
    }

    /// The 32-byte secret key.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.keypair.secret_bytes()
    }

    /// Builds the event, computes its id and signs it without auxiliary randomness, so the same
    /// inputs always give the same event.
    pub fn sign(
        &self,
        created_at: u64,
        kind: u16,
        tags: Vec<Vec<String>>,
        content: String,
    ) -> Event {
        let mut event = Event {
            id: EventId([0; 32]),
            pubkey: self.pubkey(),
            created_at,
            kind,
            tags,
            content,
            sig: Signature([0; 64]),
        };
        event.id = event.compute_id();
        event.sig = self.sign_id(&event.id);
        event
    }

    /// The BIP-340 signature of `id`, deterministic (no auxiliary randomness).
    pub fn sign_id(&self, id: &EventId) -> Signature {
        let sig = SECP256K1.sign_schnorr_no_aux_rand(id.as_bytes(), &self.keypair);
        Signature(sig.to_byte_array())
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("pubkey", &self.pubkey())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventErrorKind;

    #[test]
    fn seeded_keys_are_deterministic_and_distinct() {
        assert_eq!(
            Keys::from_seed(7).secret_bytes(),
            Keys::from_seed(7).secret_bytes()
        );
        assert_eq!(Keys::from_seed(7).pubkey(), Keys::from_seed(7).pubkey());
        assert_ne!(Keys::from_seed(7).pubkey(), Keys::from_seed(8).pubkey());
        let expected: [u8; 32] = Sha256::new()
            .chain_update(7u64.to_le_bytes())
            .chain_update(0u64.to_le_bytes())
            .finalize()
            .into();
        assert_eq!(Keys::from_seed(7).secret_bytes(), expected);
    }

    #[test]
    fn secret_bytes_round_trip_and_rejections() {
        let keys = Keys::generate();
        let again = Keys::from_secret_bytes(&keys.secret_bytes()).unwrap();
        assert_eq!(again.pubkey(), keys.pubkey());
        assert_ne!(Keys::generate().pubkey(), keys.pubkey());
        let zero = Keys::from_secret_bytes(&[0; 32]).unwrap_err();
        assert_eq!(zero.kind(), EventErrorKind::BadField);
        assert!(Keys::from_secret_bytes(&[0xff; 32]).is_err());
    }

    #[test]
    fn bip340_test_vector_pubkey() {
        // BIP-340 test vector 1: secret key 3 has this x-only public key.
        let mut secret = [0u8; 32];
        secret[31] = 3;
        let keys = Keys::from_secret_bytes(&secret).unwrap();
        assert_eq!(
            keys.pubkey().to_hex(),
            "f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9"
        );
    }

    #[test]
    fn signed_events_verify_and_are_deterministic() {
        let keys = Keys::from_seed(1);
        let tags = vec![vec!["t".to_owned(), "nostr".to_owned()]];
        let a = keys.sign(1_700_000_000, 1, tags.clone(), "hello".to_owned());
        let b = keys.sign(1_700_000_000, 1, tags, "hello".to_owned());
        assert_eq!(a, b);
        assert_eq!(a.pubkey, keys.pubkey());
        assert_eq!(a.id, a.compute_id());
        a.verify().unwrap();
        let c = keys.sign(1_700_000_001, 1, vec![], "hello".to_owned());
        assert_ne!(a.id, c.id);
        c.verify().unwrap();
    }

    #[test]
    fn debug_hides_the_secret() {
        let keys = Keys::from_seed(3);
        let shown = format!("{keys:?}");
        assert!(shown.contains(&keys.pubkey().to_hex()), "{shown}");
        let secret = crate::event::EventId(keys.secret_bytes()).to_hex();
        assert!(!shown.contains(&secret), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}

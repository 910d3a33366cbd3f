//! Customer links: a URL token that lets one payer read its own streams until it expires.
//!
//! Token = hex(`version ‖ payer ‖ expiresAt ‖ key tag`) `.` hex(HMAC-SHA256(secret, that)), where
//! the key tag is the first 8 bytes of keccak256 of the billing API key's name that issued it
//! (the page shows only that key's payees; a removed key's links die with it). The secret is 32
//! random bytes in the datadir (`customer-link.key`, written and fsynced before the first link is
//! given out); rotating it revokes every link at once.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::RwLock,
};

use alloy::primitives::{Address, B256, hex, keccak256};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const PAYLOAD_LEN: usize = 1 + 20 + 8 + 8;
const SECRET_FILE: &str = "customer-link.key";

/// What a valid token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkClaims {
    /// The payer whose streams may be read.
    pub payer: Address,
    /// Unix second after which the link is refused.
    pub expires_at: u64,
    /// Which billing key issued it (keccak256 of its name, first 8 bytes).
    pub key_tag: [u8; 8],
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a token of ours (shape, version or signature).
    #[error("invalid link")]
    Invalid,
    /// Past its expiry.
    #[error("this link expired at {0} (unix time); ask the vendor for a new one")]
    Expired(u64),
    /// The secret file could not be read or written.
    #[error("customer link secret: {0}")]
    Storage(String),
}

/// Issues and checks links with the node's secret.
#[derive(Debug)]
pub struct CustomerLinks {
    path: PathBuf,
    secret: RwLock<[u8; 32]>,
}

/// The tag of the billing key named `name`.
pub fn key_tag(name: &str) -> [u8; 8] {
    let hash = keccak256(name.as_bytes());
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&hash[..8]);
    tag
}

impl CustomerLinks {
    /// The links of the datadir `dir`: its secret, created (and fsynced) if missing.
    pub fn open(dir: &Path) -> Result<Self, LinkError> {
        let path = dir.join(SECRET_FILE);
        let secret = match std::fs::read(&path) {
            Ok(bytes) => bytes
                .try_into()
                .map_err(|_| LinkError::Storage(format!("{} is not 32 bytes", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_new_secret(&path)?,
            Err(e) => return Err(LinkError::Storage(format!("{}: {e}", path.display()))),
        };
        Ok(Self { path, secret: RwLock::new(secret) })
    }

    /// A new secret: every link issued before is refused from now on.
    pub fn rotate(&self) -> Result<(), LinkError> {
        let secret = write_new_secret(&self.path)?;
        *self.secret.write().map_err(|_| LinkError::Storage("lock poisoned".into()))? = secret;
        Ok(())
    }

    /// A token for `payer` until `expires_at`, issued by the billing key named `key_name`.
    pub fn issue(
        &self,
        payer: Address,
        expires_at: u64,
        key_name: &str,
    ) -> Result<String, LinkError> {
        let mut payload = [0u8; PAYLOAD_LEN];
        payload[0] = VERSION;
        payload[1..21].copy_from_slice(payer.as_slice());
        payload[21..29].copy_from_slice(&expires_at.to_be_bytes());
        payload[29..37].copy_from_slice(&key_tag(key_name));
        let mac = self.mac(&payload)?;
        Ok(format!("{}.{}", hex::encode(payload), hex::encode(mac)))
    }

    /// The claims of `token` if it is ours and not expired at `now`.
    pub fn verify(&self, token: &str, now: u64) -> Result<LinkClaims, LinkError> {
        let (payload, mac) = token.split_once('.').ok_or(LinkError::Invalid)?;
        let payload = hex::decode(payload).map_err(|_| LinkError::Invalid)?;
        let mac = hex::decode(mac).map_err(|_| LinkError::Invalid)?;
        if payload.len() != PAYLOAD_LEN || payload[0] != VERSION {
            return Err(LinkError::Invalid);
        }
        let secret = *self.secret.read().map_err(|_| LinkError::Storage("lock poisoned".into()))?;
        let mut check =
            <Hmac<Sha256> as Mac>::new_from_slice(&secret).map_err(|_| LinkError::Invalid)?;
        check.update(&payload);
        // Constant-time comparison.
        check.verify_slice(&mac).map_err(|_| LinkError::Invalid)?;
        let payer = Address::from_slice(&payload[1..21]);
        let expires_at =
            u64::from_be_bytes(payload[21..29].try_into().map_err(|_| LinkError::Invalid)?);
        let key_tag = payload[29..37].try_into().map_err(|_| LinkError::Invalid)?;
        if now > expires_at {
            return Err(LinkError::Expired(expires_at));
        }
        Ok(LinkClaims { payer, expires_at, key_tag })
    }

    fn mac(&self, payload: &[u8]) -> Result<B256, LinkError> {
        let secret = *self.secret.read().map_err(|_| LinkError::Storage("lock poisoned".into()))?;
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&secret).map_err(|_| LinkError::Invalid)?;
        mac.update(payload);
        Ok(B256::from_slice(&mac.finalize().into_bytes()))
    }
}

/// 32 fresh random bytes written to `path` (through a fsynced temporary file, renamed).
fn write_new_secret(path: &Path) -> Result<[u8; 32], LinkError> {
    let storage = |e: std::io::Error| LinkError::Storage(format!("{}: {e}", path.display()));
    // 32 bytes from the OS's CSPRNG (through the signer's key generation, which already draws
    // from it: no second RNG dependency).
    let secret = alloy::signers::local::PrivateKeySigner::random().to_bytes().0;
    let tmp = path.with_extension("key.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(storage)?;
    file.write_all(&secret).map_err(storage)?;
    file.sync_all().map_err(storage)?;
    std::fs::rename(&tmp, path).map_err(storage)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(storage)?;
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> (tempfile::TempDir, CustomerLinks) {
        let dir = tempfile::tempdir().expect("tempdir");
        let links = CustomerLinks::open(dir.path()).expect("opens");
        (dir, links)
    }

    #[test]
    fn a_link_grants_its_payer_until_it_expires() -> Result<(), LinkError> {
        let (_dir, links) = links();
        let payer = Address::repeat_byte(7);
        let token = links.issue(payer, 1_000, "acme")?;
        let claims = links.verify(&token, 999)?;
        assert_eq!(
            (claims.payer, claims.expires_at, claims.key_tag),
            (payer, 1_000, key_tag("acme"))
        );
        assert_eq!(links.verify(&token, 1_000)?.payer, payer, "valid through its last second");
        assert_eq!(links.verify(&token, 1_001), Err(LinkError::Expired(1_000)));
        Ok(())
    }

    #[test]
    fn a_tampered_token_is_refused() -> Result<(), LinkError> {
        let (_dir, links) = links();
        let token = links.issue(Address::repeat_byte(7), 1_000, "acme")?;
        // Another payer, a later expiry: the MAC no longer matches.
        let other = token.replacen("07", "08", 1);
        assert_eq!(links.verify(&other, 0), Err(LinkError::Invalid));
        let (payload, mac) = token.split_once('.').ok_or(LinkError::Invalid)?;
        let later = format!("{}ff{}.{mac}", &payload[..42], &payload[44..]);
        assert_eq!(links.verify(&later, 0), Err(LinkError::Invalid));
        for garbage in ["", ".", "zz.zz", "01.00", payload] {
            assert_eq!(links.verify(garbage, 0), Err(LinkError::Invalid), "{garbage:?}");
        }
        Ok(())
    }

    #[test]
    fn rotation_revokes_and_the_secret_survives_a_restart() -> Result<(), LinkError> {
        let (dir, links) = links();
        let token = links.issue(Address::repeat_byte(1), 1_000, "acme")?;
        let reopened = CustomerLinks::open(dir.path())?;
        assert!(reopened.verify(&token, 0).is_ok(), "same secret after a restart");
        links.rotate()?;
        assert_eq!(links.verify(&token, 0), Err(LinkError::Invalid));
        let reopened = CustomerLinks::open(dir.path())?;
        assert_eq!(reopened.verify(&token, 0), Err(LinkError::Invalid), "rotation is durable");
        Ok(())
    }
}

//! What to open: the TCTI (how to reach the TPM) and the folder of wrapped key blobs. The
//! optional key auth value is not here; it is a [`keyward_core::Pin`] passed to
//! `TpmBackend::open`.
//!
//! The TCTI string is parsed strictly here, not by tss-esapi: tss-esapi 7.x reads unknown
//! options leniently, so `swtpm:path=/run/tpm.sock` silently becomes `localhost:2321` (a
//! different TPM, or none). Only two forms are accepted, `device:/dev/tpmrm0` and
//! `swtpm:host=H,port=P` (swtpm's control channel is then `P+1`), and they are handed to
//! tss-esapi in a canonical form it reads exactly.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use keyward_core::KeyId;

use crate::error::TpmError;

/// How to reach the TPM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tcti {
    /// A character device: `/dev/tpmrm0` (the kernel resource manager) on real machines.
    Device(PathBuf),
    /// swtpm or the Microsoft simulator over TCP: commands on `port`, control on `port + 1`.
    Swtpm {
        /// Host name or IP address.
        host: String,
        /// Command port.
        port: u16,
    },
}

const FORMS: &str = "expected `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`";

impl Tcti {
    /// Parses a TCTI string, refusing anything tss-esapi 7.x might misread.
    ///
    /// # Errors
    /// [`TpmError::BadTcti`] naming the string and what is wrong.
    pub fn parse(text: &str) -> Result<Self, TpmError> {
        let bad = |reason: String| TpmError::BadTcti { tcti: text.to_owned(), reason };
        let (kind, conf) = text.split_once(':').unwrap_or((text, ""));
        match kind {
            "device" => {
                let path = PathBuf::from(conf);
                if !path.is_absolute() || conf.contains(',') {
                    return Err(bad(format!("a device TCTI needs an absolute path; {FORMS}")));
                }
                Ok(Self::Device(path))
            }
            "swtpm" | "mssim" => {
                let (mut host, mut port) = (None, None);
                for option in conf.split(',') {
                    let (key, value) = option.split_once('=').unwrap_or((option, ""));
                    let slot = match key {
                        "host" => &mut host,
                        "port" => &mut port,
                        "path" => {
                            return Err(bad(format!(
                                "Unix-socket swtpm is not supported: tss-esapi 7.x would silently connect to localhost:2321 instead; run swtpm with `--server type=tcp,port=P --ctrl type=tcp,port=P+1`; {FORMS}"
                            )))
                        }
                        other => return Err(bad(format!("unknown option `{other}`; {FORMS}"))),
                    };
                    if slot.replace(value).is_some() {
                        return Err(bad(format!("option `{key}` given twice")));
                    }
                }
                let host =
                    host.filter(|h| valid_host(h)).ok_or_else(|| bad(format!("missing or bad `host=`; {FORMS}")))?;
                let port = port
                    .and_then(|p| u16::from_str(p).ok())
                    .filter(|p| (1..u16::MAX).contains(p))
                    .ok_or_else(|| bad(format!("missing or bad `port=` (1-65534; control is port+1); {FORMS}")))?;
                Ok(Self::Swtpm { host: host.to_owned(), port })
            }
            _ => Err(bad(FORMS.to_owned())),
        }
    }

    /// The tss-esapi TCTI in the one form it reads exactly.
    pub(crate) fn name_conf(&self) -> Result<tss_esapi::TctiNameConf, TpmError> {
        tss_esapi::TctiNameConf::from_str(&self.to_string())
            .map_err(|source| TpmError::Connect { tcti: self.to_string(), source })
    }
}

fn valid_host(host: &str) -> bool {
    !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
}

impl fmt::Display for Tcti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Device(path) => write!(f, "device:{}", path.display()),
            Self::Swtpm { host, port } => write!(f, "swtpm:host={host},port={port}"),
        }
    }
}

/// Everything needed to open a TPM store except the key auth value.
#[derive(Clone, Debug)]
pub struct TpmConfig {
    /// How to reach the TPM.
    pub tcti: Tcti,
    /// Folder of wrapped key blobs (`<name>.tpmkey`, mode 0600); created 0700 if missing.
    pub key_dir: PathBuf,
    /// Keys kept at persistent handles instead of in blobs, by name (handles in
    /// [`crate::PERSISTENT_HANDLES`]).
    pub persistent: BTreeMap<KeyId, u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_device_and_tcp_swtpm_in_canonical_form() {
        assert_eq!(Tcti::parse("device:/dev/tpmrm0").unwrap(), Tcti::Device("/dev/tpmrm0".into()));
        let t = Tcti::parse("swtpm:port=2321,host=127.0.0.1").unwrap();
        assert_eq!(t.to_string(), "swtpm:host=127.0.0.1,port=2321");
        let conf = t.name_conf().unwrap();
        assert_eq!(conf, tss_esapi::TctiNameConf::from_str("swtpm:host=127.0.0.1,port=2321").unwrap());
    }

    #[test]
    fn refuses_what_tss_esapi_would_misread() {
        for bad in [
            "swtpm:path=/tmp/tpm.sock",
            "swtpm",
            "swtpm:host=127.0.0.1",
            "swtpm:host=127.0.0.1,port=2321,port=2322",
            "swtpm:host=127.0.0.1,port=65535",
            "swtpm:host=a,b,port=1",
            "swtpm:host=127.0.0.1,port=2321,control=2322",
            "device",
            "device:tpmrm0",
            "tabrmd:bus_type=session",
            "/dev/tpmrm0",
        ] {
            assert!(Tcti::parse(bad).is_err(), "{bad} accepted");
        }
        let err = Tcti::parse("swtpm:path=/tmp/tpm.sock").unwrap_err().to_string();
        assert!(err.contains("localhost:2321") && err.contains("swtpm:path=/tmp/tpm.sock"), "{err}");
    }
}

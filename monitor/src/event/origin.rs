//! Where events come from: this host's name and the kernel's boot id, read once per
//! process and carried by every event (`host`, `boot_id`), so that events of many hosts
//! in one stream stay apart, and a consumer can tell a host's reboots apart.
use std::sync::OnceLock;

/// This host, as every event names it.
#[derive(Debug)]
pub struct Origin {
    /// The host name (`gethostname`; `localhost` if unreadable).
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id` (a UUID, new at each boot), or `unknown`.
    pub boot_id: String,
}

/// Where the kernel says which boot this is.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

static ORIGIN: OnceLock<Origin> = OnceLock::new();

/// This host (read at the first call).
pub fn origin() -> &'static Origin {
    ORIGIN.get_or_init(|| Origin {
        host: crate::os::host::host_name(),
        boot_id: read_boot_id(std::path::Path::new(BOOT_ID)).unwrap_or_else(|e| {
            tracing::warn!(file = BOOT_ID, error = %e, "cannot read the boot id: events say boot_id \"unknown\"");
            "unknown".to_owned()
        }),
    })
}

/// The boot id in `path`: one line holding a UUID (36 characters of hex digits and
/// dashes); anything else is an error.
fn read_boot_id(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let id = text.strip_suffix(b"\n").unwrap_or(&text);
    let uuid = id.len() == 36
        && id.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !uuid {
        return Err(format!("not a UUID ({} bytes)", id.len()));
    }
    Ok(String::from_utf8_lossy(id).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_id_is_the_kernels_uuid() {
        let id = read_boot_id(std::path::Path::new(BOOT_ID)).expect("this kernel has a boot id");
        assert_eq!(id.len(), 36);
        assert_eq!(origin().boot_id, id);
        assert!(!origin().host.is_empty());
    }

    #[test]
    fn a_boot_id_that_is_not_a_uuid_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("boot_id");
        for bad in [
            &b"x\n"[..],
            b"",
            b"0123456789abcdef0123456789abcdef0123\n",
            b"\xff\n",
        ] {
            std::fs::write(&p, bad).expect("write");
            assert!(read_boot_id(&p).is_err(), "{bad:?}");
        }
        std::fs::write(&p, "2b1f9d3e-6c0a-4a53-9a59-1d2c3b4a5f60\n").expect("write");
        assert_eq!(
            read_boot_id(&p).as_deref(),
            Ok("2b1f9d3e-6c0a-4a53-9a59-1d2c3b4a5f60")
        );
    }
}

//! `ca_file`: certificates an HTTP client trusts besides the system's.

use std::path::Path;

/// Reads the PEM certificates in `path` (at least one). Errors name the
/// file (the caller names the setting).
pub fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in it (a PEM file with `-----BEGIN CERTIFICATE-----`)",
            path.display()
        ));
    }
    Ok(certs)
}

/// `builder`, trusting `ca_file`'s certificates as well as the system's.
pub fn trusting(
    builder: reqwest::ClientBuilder,
    ca_file: Option<&Path>,
) -> Result<reqwest::ClientBuilder, String> {
    Ok(match ca_file {
        None => builder,
        Some(path) => {
            builder.tls_certs_merge(read_ca_file(path).map_err(|e| format!("ca_file: {e}"))?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "nothing here\n").unwrap();
        let err = read_ca_file(&path).unwrap_err();
        assert!(
            err.contains("ca.pem") && err.contains("no certificate"),
            "{err}"
        );
        let err = read_ca_file(&dir.path().join("missing.pem")).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        let certified = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
        std::fs::write(&path, certified.cert.pem()).unwrap();
        assert_eq!(read_ca_file(&path).unwrap().len(), 1);
    }
}

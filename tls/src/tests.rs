//! The pieces of mutual TLS with real certificates: roles read from SANs, the role check on
//! servers, and a certificate reloaded when its files change.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::BTreeMap;

use rustls::client::danger::ServerCertVerifier;

use crate::generate::Authority;
use crate::*;

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[test]
fn roles_come_from_spiffe_uris_and_the_identities_map() {
    let ca = Authority::new().unwrap();
    let origin = ca.issue(Some(Role::Origin), &["o-0.origin"]).unwrap();
    let none = ca.issue(None, &["node.example"]).unwrap();
    let identities = Identities::default();
    assert_eq!(
        identities.roles_of(&der(&origin.cert_pem)),
        Roles::of(&[Role::Origin])
    );
    assert!(identities.roles_of(&der(&none.cert_pem)).is_empty());
    let mapped = Identities::new(BTreeMap::from([("node.example".to_owned(), Role::Agent)]));
    assert_eq!(
        mapped.roles_of(&der(&none.cert_pem)),
        Roles::of(&[Role::Agent])
    );
    assert!(
        identities
            .roles_of(&CertificateDer::from(vec![1, 2, 3]))
            .is_empty()
    );
}

#[test]
fn callers_are_admitted_by_role() {
    let writers = Roles::of(&[Role::Proxy, Role::Origin]);
    assert!(Caller::Unchecked.admitted(writers));
    assert!(!Caller::Anonymous.admitted(Roles::ANY));
    assert!(Caller::Verified(Roles::of(&[Role::Proxy])).admitted(writers));
    assert!(!Caller::Verified(Roles::of(&[Role::Agent])).admitted(writers));
    assert!(!Caller::Verified(Roles::NONE).admitted(Roles::ANY));
}

#[test]
fn role_names_parse_from_config() {
    let config: TlsConfig = serde_yaml_ng::from_str(
        "{cert: a, key: b, ca: c, identities: {\"spiffe://x/sa/p\": build-index}}",
    )
    .unwrap();
    assert_eq!(config.identities["spiffe://x/sa/p"], Role::BuildIndex);
    assert!(
        serde_yaml_ng::from_str::<TlsConfig>("{cert: a, key: b, identities: {x: admin}}").is_err()
    );
}

/// The client side's check of a server: chains to the CA and names an expected role; the host
/// name is not looked at.
#[test]
fn servers_are_verified_by_ca_and_role_not_by_name() {
    install_crypto_provider();
    let ca = Authority::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = ca.write(dir.path(), Role::Agent).unwrap();
    assert!(
        config
            .client(Roles::of(&[Role::Tracker]), &[b"h2"])
            .unwrap()
            .is_some()
    );
    let roots = config.roots(config.ca.as_deref().unwrap()).unwrap();
    let verifier =
        verify::RoleVerifier::new(roots, Identities::default(), Roles::of(&[Role::Tracker]));
    let verify = |pem: &str| {
        verifier.verify_server_cert(
            &der(pem),
            &[],
            &ServerName::try_from("10.1.2.3").unwrap(),
            &[],
            UnixTime::now(),
        )
    };
    let tracker = ca
        .issue(Some(Role::Tracker), &["elsewhere.example"])
        .unwrap();
    assert!(verify(&tracker.cert_pem).is_ok());
    let agent = ca.issue(Some(Role::Agent), &["10.1.2.3"]).unwrap();
    assert!(
        verify(&agent.cert_pem).is_err(),
        "an agent cannot pose as the tracker"
    );
    let stranger = Authority::new().unwrap();
    let forged = stranger.issue(Some(Role::Tracker), &["10.1.2.3"]).unwrap();
    assert!(
        verify(&forged.cert_pem).is_err(),
        "another CA's certificate"
    );
}

#[test]
fn no_ca_means_no_cluster_client_and_no_client_checks() {
    let ca = Authority::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ca.write(dir.path(), Role::Proxy).unwrap();
    config.ca = None;
    assert!(config.client(Roles::ANY, &[b"h2"]).unwrap().is_none());
    assert!(config.server().unwrap().identities.is_none());
}

#[test]
fn bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new().unwrap();
    let mut config = ca.write(dir.path(), Role::Origin).unwrap();
    config.ca = Some(dir.path().join("missing.crt"));
    let error = config.server().unwrap_err().to_string();
    assert!(
        error.contains("tls.ca") && error.contains("missing.crt"),
        "{error}"
    );
    let other = ca.issue(Some(Role::Origin), &["x"]).unwrap();
    std::fs::write(dir.path().join("tls.key"), other.key_pem).unwrap();
    let error = config.server().unwrap_err().to_string();
    assert!(error.contains("cannot be used together"), "{error}");
}

/// Rotation: new files are used once looked at (at most a second after a handshake saw the
/// old ones); a broken pair written meanwhile keeps the previous one.
#[test]
fn a_rotated_certificate_is_picked_up_and_a_broken_one_is_not() {
    install_crypto_provider();
    let ca = Authority::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = ca.write(dir.path(), Role::Origin).unwrap();
    let keys = keys::KeyFiles::load(&config.cert, &config.key).unwrap();
    let first = keys.current().cert[0].clone();

    std::fs::write(&config.key, "not a key").unwrap();
    keys.check_now();
    assert_eq!(keys.current().cert[0], first, "a broken pair is not used");

    let next = ca.issue(Some(Role::Origin), &["127.0.0.1"]).unwrap();
    std::fs::write(&config.cert, &next.cert_pem).unwrap();
    std::fs::write(&config.key, &next.key_pem).unwrap();
    keys.check_now();
    assert_eq!(keys.current().cert[0], der(&next.cert_pem));
}

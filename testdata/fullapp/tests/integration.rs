//! fullapp's integration tests: the public API as another crate sees it.

#[test]
fn report_is_deterministic_and_complete() {
    let first = fullapp::report();
    assert_eq!(first.len(), 15);
    assert!(first.iter().any(|l| l.starts_with("c: fullapp_c_mix(7, 11) = ")));
    assert!(first.iter().any(|l| l == "panic: 1 / 0 = Err(\"division of 1 by zero\")"));
    assert!(first.iter().any(|l| l == "generic: largest &str = zucchini"));
}

#[test]
fn checksum_depends_on_order() {
    assert_ne!(fullapp::checksum(b"ab"), fullapp::checksum(b"ba"));
}

#[test]
fn tls_probe_reports_two_threads() {
    let probe = fullapp::tls_probe();
    assert_eq!(probe.len(), 4);
    assert!(probe[2].starts_with("tls main 0x"));
    assert!(probe[3].starts_with("tls worker 0x"));
}

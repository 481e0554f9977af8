//! `fullapp`: prints a deterministic report; `fullapp --tls-probe` prints run-time addresses
//! instead (for ipbp's map tests).

fn main() {
    let lines = if std::env::args().nth(1).as_deref() == Some("--tls-probe") {
        fullapp::tls_probe()
    } else {
        fullapp::report()
    };
    for line in lines {
        println!("{line}");
    }
}

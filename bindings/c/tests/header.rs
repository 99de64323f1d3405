//! include/shmrt.h is what cbindgen makes of this crate: regenerated here
//! and compared, so the checked-in header cannot drift from the API.
//! `SHMRT_BLESS=1 cargo test -p shmrt-capi --test header` rewrites it.

use std::path::Path;

#[test]
fn header_matches_the_api() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = dir.join("include/shmrt.h");
    if std::env::var_os("SHMRT_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/shmrt.h");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/shmrt.h differs from what cbindgen makes of bindings/c/src: run \
         `SHMRT_BLESS=1 cargo test -p shmrt-capi --test header` and commit the header"
    );
}

//! `wit/shmrt.wit` is the single source of truth for the host imports: the
//! linker must define exactly its functions, with the matching core
//! signatures.

use std::collections::BTreeMap;
use std::path::Path;

use wit_parser::{Resolve, Type};

fn core_type(t: &Type) -> &'static str {
    match t {
        Type::Bool
        | Type::U8
        | Type::S8
        | Type::U16
        | Type::S16
        | Type::U32
        | Type::S32
        | Type::Char => "i32",
        Type::U64 | Type::S64 => "i64",
        Type::F32 => "f32",
        Type::F64 => "f64",
        other => panic!("{other:?} does not lower to one core value; keep the interface scalar"),
    }
}

#[test]
fn linker_defines_exactly_the_wit_functions() {
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/shmrt.wit");
    let mut resolve = Resolve::default();
    let pkg = resolve.push_file(&wit).expect("wit/shmrt.wit parses");
    let iface_id = resolve.packages[pkg].interfaces["shmrt"];
    let mut from_wit = BTreeMap::new();
    for (name, f) in &resolve.interfaces[iface_id].functions {
        let params: Vec<String> = f
            .params
            .iter()
            .map(|p| core_type(&p.ty).to_string())
            .collect();
        let results: Vec<String> = f.result.iter().map(|t| core_type(t).to_string()).collect();
        from_wit.insert(name.replace('-', "_"), (params, results));
    }
    assert_eq!(
        from_wit.len(),
        10,
        "the seven imports of DESIGN.md, config-get, host-call and host-result"
    );

    let runtime = shmrt::Runtime::new().unwrap();
    let from_linker: BTreeMap<String, (Vec<String>, Vec<String>)> = runtime
        .shmrt_import_signatures()
        .unwrap()
        .into_iter()
        .map(|s| (s.name, (s.params, s.results)))
        .collect();
    assert_eq!(from_linker, from_wit);
    assert_eq!(shmrt::host_imports::MODULE, "shmrt");
}

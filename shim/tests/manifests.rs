//! The Kubernetes manifests of deploy/kubernetes (docs/run-on-kubernetes.md)
//! parse, and agree with the shim and with each other: the runtime class's
//! handler, the pods' class, the shared memory-backed volume and the
//! segment path the native host makes and the plugin attaches to.

use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_yaml::Value;

fn manifests() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut docs = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            docs.push((path.clone(), value));
        }
    }
    docs
}

fn kind<'a>(docs: &'a [(PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, v)| v["kind"].as_str() == Some(kind))
        .map(|(_, v)| v)
        .collect()
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["value"].as_str())
}

#[test]
fn the_manifests_parse_and_agree() {
    let docs = manifests();
    assert!(docs.len() >= 3, "expected the runtime class and two pods");
    for (path, doc) in &docs {
        for key in ["apiVersion", "kind", "metadata"] {
            assert!(!doc[key].is_null(), "{}: no {key}", path.display());
        }
    }

    let classes = kind(&docs, "RuntimeClass");
    assert_eq!(classes.len(), 1);
    // containerd's runtime `shmrt` (docs/run-on-kubernetes.md) runs the
    // shim of type io.containerd.shmrt.v1.
    assert_eq!(classes[0]["handler"].as_str(), Some("shmrt"));
    let class = classes[0]["metadata"]["name"].as_str().unwrap();

    let pods = kind(&docs, "Pod");
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        assert_eq!(pod["spec"]["runtimeClassName"].as_str(), Some(class));
    }

    // The attached pod: a memory-backed emptyDir mounted by both
    // containers, the host making the segment where the plugin attaches.
    let attached = pods
        .iter()
        .find(|p| p["metadata"]["name"].as_str() == Some("shmrt-attached"))
        .expect("the shmrt-attached pod");
    let volumes = attached["spec"]["volumes"].as_sequence().unwrap();
    let shared = volumes
        .iter()
        .find(|v| v["emptyDir"]["medium"].as_str() == Some("Memory"))
        .expect("an emptyDir of medium Memory");
    let volume = shared["name"].as_str().unwrap();
    let containers = attached["spec"]["containers"].as_sequence().unwrap();
    let mount_of = |c: &Value| -> String {
        c["volumeMounts"]
            .as_sequence()
            .and_then(|m| m.iter().find(|m| m["name"].as_str() == Some(volume)))
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("{:?} does not mount {volume}", c["name"]))
            .to_string()
    };
    let plugin = containers
        .iter()
        .find(|c| env(c, "SHMRT_ATTACH").is_some())
        .expect("a container with SHMRT_ATTACH");
    let host = containers
        .iter()
        .find(|c| env(c, "SHMRT_ATTACH").is_none())
        .expect("the native host");
    let segment = env(plugin, "SHMRT_ATTACH").unwrap();
    assert!(segment.starts_with(&format!("{}/", mount_of(plugin))));
    let command: Vec<&str> = host["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(command[1..], ["--wait", segment]);
    assert!(segment.starts_with(&format!("{}/", mount_of(host))));
    assert!(env(plugin, "SHMRT_PEER").unwrap().parse::<u32>().is_ok());
}

//! docs/config.md lists every setting with its default, and
//! deploy/megalith.toml is a configuration that starts: both checked
//! against the code, so neither can drift from it.

use megalith_relay::ServeConfig;
use serde_json::Value;

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The first ```toml block of a markdown text.
fn toml_block(markdown: &str) -> String {
    let start = markdown.find("```toml\n").expect("a ```toml block") + 8;
    let len = markdown[start..].find("```").expect("the block ends");
    markdown[start..start + len].to_string()
}

/// Every (path, value) of the defaults that has a value; `documented` must
/// hold each with an equal value (numbers compared as numbers).
fn compare(path: &str, default: &Value, documented: &Value, problems: &mut Vec<String>) {
    match default {
        Value::Null => {}
        Value::Object(fields) => {
            for (key, value) in fields {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match documented.get(key) {
                    Some(doc) => compare(&here, value, doc, problems),
                    None if value.is_null() => {
                        problems.push(format!("{here} (optional) is not documented"))
                    }
                    None => problems.push(format!("{here} is not documented (default {value})")),
                }
            }
        }
        Value::Number(n) => {
            if documented.as_f64() != n.as_f64() {
                problems.push(format!("{path}: documented {documented}, default {n}"));
            }
        }
        other => {
            if documented != other {
                problems.push(format!("{path}: documented {documented}, default {other}"));
            }
        }
    }
}

#[test]
fn the_config_page_lists_every_setting_with_its_default() {
    let block = toml_block(&repo_file("docs/config.md"));
    // The relay's own parser takes it (unknown keys are errors).
    ServeConfig::from_toml(&block).unwrap_or_else(|e| panic!("docs/config.md: {e}"));
    let documented: toml::Value = toml::from_str(&block).unwrap();
    let documented = serde_json::to_value(documented).unwrap();
    let mut defaults = serde_json::to_value(ServeConfig::default()).unwrap();
    // The example `[[mirror]]` table stands for a list that is empty by default.
    defaults.as_object_mut().unwrap().remove("mirror");
    assert!(
        documented.get("mirror").is_some(),
        "the [[mirror]] table is shown"
    );
    // So does the example `[[retention.rule]]` table.
    defaults["retention"]
        .as_object_mut()
        .unwrap()
        .remove("rule");
    assert!(
        documented["retention"].get("rule").is_some(),
        "the [[retention.rule]] table is shown"
    );
    let mut problems = Vec::new();
    compare("", &defaults, &documented, &mut problems);
    assert!(
        problems.is_empty(),
        "docs/config.md:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_sample_config_starts() {
    let config = ServeConfig::from_toml(&repo_file("deploy/megalith.toml"))
        .unwrap_or_else(|e| panic!("deploy/megalith.toml: {e}"));
    config.check().unwrap();
    assert!(!config.relay().trusted_proxy_ranges().unwrap().is_empty());
}

//! Writes a YAML tree in the block style of PyYAML's `safe_dump(sort_keys=False)`, which
//! `nvflare cert request` uses for `site.yaml`: mappings `key: value`, a list under a key at
//! the key's own indent (`- item`), two spaces per level, `{}` / `[]` when empty. A string
//! is plain only when it is unmistakably a string (so PyYAML, a YAML 1.1 reader, reads back
//! the same text: no `yes`, `on`, `null`, numbers or dates), else single-quoted; text with
//! control characters is double-quoted with escapes. PyYAML folds plain strings longer than
//! 80 columns; this writer never folds (the same value either way).

use yaml_rust2::Yaml;

/// The YAML text of `doc`, ending in a newline.
pub fn to_pyyaml_block(doc: &Yaml) -> String {
    let mut out = String::new();
    match doc {
        Yaml::Hash(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Yaml::Array(list) if !list.is_empty() => write_list(&mut out, list, 0),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

fn write_map(out: &mut String, map: &yaml_rust2::yaml::Hash, indent: usize) {
    for (i, (k, v)) in map.iter().enumerate() {
        // The first entry of a mapping inside a list continues the `- ` line.
        if i > 0 || out.is_empty() || out.ends_with('\n') {
            pad(out, indent);
        }
        out.push_str(&scalar_text(k));
        out.push(':');
        write_value(out, v, indent, true);
    }
}

fn write_list(out: &mut String, list: &[Yaml], indent: usize) {
    for (i, item) in list.iter().enumerate() {
        if i > 0 || out.is_empty() || out.ends_with('\n') {
            pad(out, indent);
        }
        out.push('-');
        write_value(out, item, indent, false);
    }
}

/// Writes what follows `key:` or `-`.
fn write_value(out: &mut String, value: &Yaml, indent: usize, under_key: bool) {
    match value {
        Yaml::Hash(map) if !map.is_empty() => {
            if under_key {
                out.push('\n');
                write_map(out, map, indent + 2);
            } else {
                out.push(' ');
                write_map(out, map, indent + 2);
            }
        }
        Yaml::Array(list) if !list.is_empty() => {
            if under_key {
                out.push('\n');
                write_list(out, list, indent);
            } else {
                out.push(' ');
                write_list(out, list, indent + 2);
            }
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn scalar_text(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => string_text(s),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Real(r) => r.clone(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Hash(_) => "{}".into(),
        Yaml::Array(_) => "[]".into(),
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => "null".into(),
    }
}

fn string_text(s: &str) -> String {
    if s.chars().any(|c| c.is_control()) {
        // JSON's escapes are YAML's double-quoted escapes.
        return serde_json::to_string(s).unwrap_or_default();
    }
    if is_plain(s) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// Whether `s` reads back as the same string when written plain, under YAML 1.1 and 1.2.
fn is_plain(s: &str) -> bool {
    const WORDS: [&str; 12] = ["y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", ".inf", ".nan"];
    let Some(first) = s.chars().next() else { return false };
    first.is_ascii_alphabetic()
        && !s.ends_with(' ')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '/' | '-' | ' '))
        && !WORDS.contains(&s.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yaml_rust2::YamlLoader;

    fn round(text: &str) -> String {
        to_pyyaml_block(&YamlLoader::load_from_str(text).unwrap()[0])
    }

    #[test]
    fn writes_what_pyyaml_safe_dump_writes_for_a_participant_definition() {
        // The output of `nvflare cert request` 2.9.0 (PyYAML 6) for this definition.
        let input = "name: kwproject\ndescription: a site\nparticipants:\n  - name: site-1\n    type: client\n    org: nvidia\n    fed_learn_port: 8002\n    server: {host: localhost, admin_port: 8003}\n    host_names: [a.example, b]\n";
        assert_eq!(
            round(input),
            "name: kwproject\ndescription: a site\nparticipants:\n- name: site-1\n  type: client\n  org: nvidia\n  fed_learn_port: 8002\n  server:\n    host: localhost\n    admin_port: 8003\n  host_names:\n  - a.example\n  - b\n"
        );
    }

    #[test]
    fn strings_that_would_read_back_as_something_else_are_quoted() {
        assert_eq!(
            round("a: 'yes'\nb: '8002'\nc: 'it''s'\nd: '10.0.0.1'\ne: ''\nf: {}\ng: []\nh: true\n"),
            "a: 'yes'\nb: '8002'\nc: 'it''s'\nd: '10.0.0.1'\ne: ''\nf: {}\ng: []\nh: true\n"
        );
        assert_eq!(round("a: \"x\\ty\"\n"), "a: \"x\\ty\"\n");
        for text in ["a: 'yes'\n", "b: '10.0.0.1'\n", "c: \"x\\ty\"\n", "d: 'ON'\n"] {
            let doc = &YamlLoader::load_from_str(text).unwrap()[0];
            assert_eq!(&YamlLoader::load_from_str(&to_pyyaml_block(doc)).unwrap()[0], doc, "{text}");
        }
    }
}

//! The participant definition `nvflare cert request -p <name>.yaml` takes (a project name and
//! exactly one participant), read the way NVFlare 2.9 reads it: who asks (name, org), as what
//! (`kind`, `cert_type`, `cert_role`), and the two `site.yaml` copies it writes: the local one
//! (the definition, an admin's role normalised) and the one for the project admin (without
//! `builders`, `packager` and the participant's endpoint fields). Source:
//! nvflare/tool/cert/cert_commands.py (`_load_participant_definition`,
//! `_derive_identity_from_participant`, `_build_sanitized_approval_site`). Everything else
//! NVFlare checks (`participant_from_dict`) is left to `nvflare cert approve`, which re-reads
//! the same file.

use yaml_rust2::yaml::Hash;
use yaml_rust2::{Yaml, YamlLoader};

use super::ProvisionError;

/// Largest participant definition read.
pub const MAX_DEFINITION_BYTES: usize = 64 << 10;

/// What the participant asks to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The project (`name` at the top).
    pub project: String,
    /// The participant's name: the certificate's CN.
    pub name: String,
    /// Its organisation: the certificate's O.
    pub org: String,
    /// `site`, `server` or `user`.
    pub kind: &'static str,
    /// `client`, `server`, or an admin role (`org_admin`, `lead`, `member`): the CSR's
    /// `unstructuredName`.
    pub cert_type: &'static str,
    /// An admin's role (same as `cert_type`); none for sites and servers.
    pub cert_role: Option<&'static str>,
}

/// A read participant definition.
#[derive(Clone, Debug)]
pub struct Participant {
    /// Who it is.
    pub identity: Identity,
    /// The definition as NVFlare keeps it locally (`site.yaml` in the request folder).
    pub local: Yaml,
}

/// The admin roles NVFlare accepts, and the cert type each becomes.
const ADMIN_ROLES: [(&str, &str); 4] =
    [("org-admin", "org_admin"), ("org_admin", "org_admin"), ("lead", "lead"), ("member", "member")];

/// Fields of the participant the approval copy leaves out (the site keeps its endpoint).
const ENDPOINT_FIELDS: [&str; 4] = ["connection_security", "server", "fed_learn_port", "admin_port"];

impl Participant {
    /// Reads a participant definition.
    ///
    /// # Errors
    /// [`ProvisionError::Definition`] naming the field that is missing or wrong.
    pub fn parse(text: &str) -> Result<Self, ProvisionError> {
        let bad = |why: String| ProvisionError::Definition(why);
        let docs = YamlLoader::load_from_str(text).map_err(|e| bad(format!("not YAML: {e}")))?;
        let [doc] = docs.as_slice() else { return Err(bad("holds no YAML document, or more than one".into())) };
        let Yaml::Hash(top) = doc else { return Err(bad("is not a mapping".into())) };
        let project = string_field(top, "name").ok_or_else(|| bad("needs a top-level `name` (the project)".into()))?;
        check_name(&project, "the project name")?;
        let participants = match top.get(&key("participants")) {
            Some(Yaml::Array(list)) => list,
            _ => return Err(bad("needs a `participants` list".into())),
        };
        let [Yaml::Hash(participant)] = participants.as_slice() else {
            return Err(bad("`participants` must hold exactly one mapping".into()));
        };
        let field = |name: &str| {
            string_field(participant, name).ok_or_else(|| bad(format!("`participants[0].{name}` is missing")))
        };
        let (name, org, kind) = (field("name")?, field("org")?, field("type")?);
        check_name(&name, "the participant name")?;
        check_text(&org, "`org`")?;
        if participant.contains_key(&key("listening_host")) {
            return Err(bad("`listening_host` is not supported by NVFlare's distributed provisioning".into()));
        }
        let mut participant = participant.clone();
        let (kind, cert_type, cert_role) = match kind.as_str() {
            "client" => ("site", "client", None),
            "server" => ("server", "server", None),
            "admin" => {
                let role = string_field(&participant, "role").unwrap_or_default();
                let cert_type =
                    ADMIN_ROLES.iter().find(|(r, _)| *r == role.trim()).map(|(_, t)| *t).ok_or_else(|| {
                        bad(format!(
                            "an admin's `role` must be one of org_admin, lead, member (not `{}`)",
                            role.escape_debug()
                        ))
                    })?;
                // NVFlare writes the normalised role into the local site.yaml.
                if let Some(value) = participant.get_mut(&key("role")) {
                    *value = Yaml::String(cert_type.to_owned());
                }
                ("user", cert_type, Some(cert_type))
            }
            other => {
                return Err(bad(format!("`type` must be client, server or admin (not `{}`)", other.escape_debug())))
            }
        };
        // In place: the local copy keeps the order of the fields as written.
        let mut local = top.clone();
        if let Some(value) = local.get_mut(&key("participants")) {
            *value = Yaml::Array(vec![Yaml::Hash(participant)]);
        }
        Ok(Self { identity: Identity { project, name, org, kind, cert_type, cert_role }, local: Yaml::Hash(local) })
    }

    /// The copy of the definition the project admin gets (`site.yaml` in the request zip).
    pub fn for_approval(&self) -> Yaml {
        let Yaml::Hash(top) = &self.local else { return self.local.clone() };
        let mut top = top.clone();
        top.remove(&key("builders"));
        top.remove(&key("packager"));
        if let Some(Yaml::Array(list)) = top.get_mut(&key("participants")) {
            if let Some(Yaml::Hash(participant)) = list.first_mut() {
                for field in ENDPOINT_FIELDS {
                    participant.remove(&key(field));
                }
            }
        }
        Yaml::Hash(top)
    }
}

fn key(name: &str) -> Yaml {
    Yaml::String(name.to_owned())
}

fn string_field(map: &Hash, name: &str) -> Option<String> {
    match map.get(&key(name))? {
        Yaml::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// NVFlare's safe name: `[A-Za-z0-9][A-Za-z0-9._@-]*`, at most 64 characters (it names files).
fn check_name(name: &str, what: &str) -> Result<(), ProvisionError> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::Definition(format!(
            "{what} `{}` must match [A-Za-z0-9][A-Za-z0-9._@-]* and have at most 64 characters",
            name.escape_debug()
        )))
    }
}

fn check_text(value: &str, what: &str) -> Result<(), ProvisionError> {
    if value.len() <= 64 && value.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        Ok(())
    } else {
        Err(ProvisionError::Definition(format!(
            "{what} `{}` must be printable ASCII of at most 64 characters",
            value.escape_debug()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "name: kwproject\ndescription: a site\nparticipants:\n  - name: site-1\n    type: client\n    org: nvidia\n    connection_security: tls\n    server:\n      host: localhost\n      fed_learn_port: 8002\n      admin_port: 8003\n";

    #[test]
    fn a_site_is_a_client_of_kind_site_and_its_endpoint_stays_local() {
        let p = Participant::parse(SITE).unwrap();
        assert_eq!(
            p.identity,
            Identity {
                project: "kwproject".into(),
                name: "site-1".into(),
                org: "nvidia".into(),
                kind: "site",
                cert_type: "client",
                cert_role: None
            }
        );
        assert!(p.local["participants"][0]["server"]["host"].as_str() == Some("localhost"));
        let approval = p.for_approval();
        assert!(approval["participants"][0]["server"].is_badvalue());
        assert!(approval["participants"][0]["connection_security"].is_badvalue());
        assert_eq!(approval["description"].as_str(), Some("a site"));
    }

    #[test]
    fn an_admin_role_is_normalised_and_becomes_the_cert_type() {
        let text =
            "name: p\nparticipants:\n- name: admin@nvidia.com\n  type: admin\n  org: nvidia\n  role: org-admin\n";
        let p = Participant::parse(text).unwrap();
        assert_eq!(
            (p.identity.kind, p.identity.cert_type, p.identity.cert_role),
            ("user", "org_admin", Some("org_admin"))
        );
        assert_eq!(p.local["participants"][0]["role"].as_str(), Some("org_admin"));
        let no_role = "name: p\nparticipants:\n- name: a@b.c\n  type: admin\n  org: o\n  role: project_admin\n";
        assert!(Participant::parse(no_role).unwrap_err().to_string().contains("org_admin, lead, member"));
    }

    #[test]
    fn definitions_nvflare_refuses_are_refused() {
        for (text, why) in [
            ("name: p\nparticipants: []\n", "exactly one"),
            ("name: p\nparticipants:\n- {name: a, type: client}\n", "org"),
            ("name: p\nparticipants:\n- {name: ../a, type: client, org: o}\n", "participant name"),
            ("name: p\nparticipants:\n- {name: a, type: relay, org: o}\n", "client, server or admin"),
            ("name: p\nparticipants:\n- {name: a, type: client, org: o, listening_host: x}\n", "listening_host"),
            ("participants:\n- {name: a, type: client, org: o}\n", "project"),
            ("- a\n", "mapping"),
        ] {
            let err = Participant::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}

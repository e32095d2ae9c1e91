//! `token-probe`: reads a private key's attributes straight from a PKCS#11 token and tries
//! to read its secret components, printing JSON. Tests run it as a child process (so that
//! `SOFTHSM2_CONF` is set with `Command::env`, never `set_var`) to prove from outside
//! keyward that a key is sensitive and not extractable.
//!
//! Usage: `token-probe MODULE TOKEN_LABEL PIN_FILE KEY_LABEL`

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [module, token, pin_file, label] = args.as_slice() else {
        anyhow::bail!("usage: token-probe MODULE TOKEN_LABEL PIN_FILE KEY_LABEL");
    };
    let ctx = Pkcs11::new(module)?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let slot = ctx
        .get_slots_with_token()?
        .into_iter()
        .find(|s| ctx.get_token_info(*s).map(|i| i.label().trim_end() == token).unwrap_or(false))
        .ok_or_else(|| anyhow::anyhow!("no token {token}"))?;
    let session = ctx.open_ro_session(slot)?;
    let pin = std::fs::read_to_string(pin_file)?;
    session.login(UserType::User, Some(&AuthPin::from(pin.trim_end())))?;
    let keys = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(label.as_bytes().to_vec())])?;
    let key = *keys.first().ok_or_else(|| anyhow::anyhow!("no private key {label}"))?;
    let flags = session.get_attributes(
        key,
        &[
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::NeverExtractable,
            AttributeType::AlwaysSensitive,
            AttributeType::Private,
            AttributeType::Local,
        ],
    )?;
    let mut out = serde_json::Map::new();
    for a in flags {
        let (name, value) = match a {
            Attribute::Sensitive(v) => ("sensitive", v),
            Attribute::Extractable(v) => ("extractable", v),
            Attribute::NeverExtractable(v) => ("never_extractable", v),
            Attribute::AlwaysSensitive(v) => ("always_sensitive", v),
            Attribute::Private(v) => ("private", v),
            Attribute::Local(v) => ("local", v),
            _ => continue,
        };
        out.insert(name.into(), value.into());
    }
    // Secret components: a sensitive key must not return any of them.
    let secrets =
        session.get_attributes(key, &[AttributeType::PrivateExponent, AttributeType::Prime1, AttributeType::Value]);
    let revealed = match secrets {
        Ok(attrs) => attrs.len(),
        Err(_) => 0,
    };
    out.insert("secret_attributes_returned".into(), revealed.into());
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

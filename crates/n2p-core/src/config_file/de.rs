//! The deserializer behind [`ConfigSource::parse`](super::ConfigSource::parse): it walks
//! toml's spanned document tree, and its error type keeps what serde reports (key names, the
//! valid keys, expected and found types) plus the span of the key or value concerned, so the
//! caller builds messages and locations without reading serde's or toml's wording.

use std::{borrow::Cow, fmt, ops::Range};

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor, value::CowStrDeserializer};
use serde_spanned::de::{SpannedDeserializer, is_spanned};
use toml::{Spanned, de::DeValue};

use super::{HINT_MARKER, closest};

/// The error type of our deserializer: message, hint and span, built from the pieces serde
/// hands to [`de::Error`]'s methods (key names, valid keys, expected and found types).
#[derive(Debug)]
pub(super) struct DeError {
    /// What is wrong.
    pub(super) message: String,
    /// How to fix it, when we can tell.
    pub(super) hint: Option<String>,
    /// The key or value it is about.
    pub(super) span: Option<Range<usize>>,
}

impl DeError {
    fn new(message: String, hint: Option<String>) -> Self {
        Self {
            message,
            hint,
            span: None,
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        let msg = msg.to_string();
        match msg.split_once(HINT_MARKER) {
            Some((message, hint)) => Self::new(message.to_owned(), Some(hint.to_owned())),
            None => Self::new(msg, None),
        }
    }

    fn invalid_type(found: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Self::new(format!("expected {expected}, found {found}"), None)
    }

    fn invalid_value(found: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        let message = format!("invalid value: expected {expected}, found {found}");
        Self::new(message, None)
    }

    fn unknown_variant(value: &str, valid: &'static [&'static str]) -> Self {
        let hint = format!("use one of {}", backticked(valid));
        Self::new(format!("unknown value `{value}`"), Some(hint))
    }

    fn unknown_field(key: &str, valid: &'static [&'static str]) -> Self {
        let hint = match closest(key, valid) {
            _ if valid.is_empty() => "no keys are allowed here".to_owned(),
            Some(near) => format!(
                "did you mean `{near}`? valid keys here: {}",
                backticked(valid)
            ),
            None => format!("valid keys here: {}", backticked(valid)),
        };
        Self::new(format!("unknown key `{key}`"), Some(hint))
    }

    fn missing_field(key: &'static str) -> Self {
        let hint = format!("this table needs a `{key}` key");
        Self::new(format!("missing key `{key}`"), Some(hint))
    }
}

/// `words` in backticks, separated by commas.
fn backticked(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    quoted.join(", ")
}

/// One key or value of the parsed document, deserialized with [`DeError`]s.
pub(super) struct Node<'de>(pub(super) Spanned<DeValue<'de>>);

impl<'de> Node<'de> {
    /// Runs `seed` on this node; an error that has no span yet gets this node's.
    pub(super) fn seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, DeError> {
        let span = self.0.span();
        seed.deserialize(self).map_err(|mut e| {
            e.span.get_or_insert(span);
            e
        })
    }

    fn visit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.into_inner() {
            DeValue::String(Cow::Borrowed(s)) => visitor.visit_borrowed_str(s),
            DeValue::String(Cow::Owned(s)) => visitor.visit_string(s),
            DeValue::Integer(n) => match i64::from_str_radix(n.as_str(), n.radix()) {
                Ok(v) => visitor.visit_i64(v),
                Err(_) => match u64::from_str_radix(n.as_str(), n.radix()) {
                    Ok(v) => visitor.visit_u64(v),
                    Err(_) => Err(de::Error::custom(format_args!("integer {n} is too large"))),
                },
            },
            DeValue::Float(x) => match x.as_str().parse() {
                Ok(v) => visitor.visit_f64(v),
                Err(_) => Err(de::Error::custom(format_args!("float {x} is out of range"))),
            },
            DeValue::Boolean(v) => visitor.visit_bool(v),
            DeValue::Datetime(_) => Err(de::Error::invalid_type(
                de::Unexpected::Other("a date-time"),
                &visitor,
            )),
            DeValue::Array(items) => visitor.visit_seq(Items {
                iter: items.into_iter().map(Node),
                value: None,
            }),
            DeValue::Table(entries) => visitor.visit_map(Items {
                iter: entries.into_iter().map(|(key, value)| {
                    let key = Spanned::new(key.span(), DeValue::String(key.into_inner()));
                    (Node(key), Node(value))
                }),
                value: None,
            }),
        }
    }
}

impl<'de> de::Deserializer<'de> for Node<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit(visitor)
    }

    /// A key that is there is `Some`; an absent one never reaches a deserializer.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if is_spanned(name) {
            let span = self.0.span();
            return visitor.visit_map(SpannedDeserializer::new(self, span));
        }
        self.visit(visitor)
    }

    /// Enums are written as the name of a unit variant.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let span = self.0.span();
        match self.0.into_inner() {
            DeValue::String(name) => visitor.visit_enum(CowStrDeserializer::new(name)),
            other => Node(Spanned::new(span, other)).visit(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

impl<'de> IntoDeserializer<'de, DeError> for Node<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// The elements of an array, or the entries of a table, handed to a visitor one by one.
struct Items<'de, I> {
    iter: I,
    /// The value of the key just handed out.
    value: Option<Node<'de>>,
}

impl<'de, I: Iterator<Item = Node<'de>>> de::SeqAccess<'de> for Items<'de, I> {
    type Error = DeError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, DeError> {
        self.iter.next().map(|node| node.seed(seed)).transpose()
    }
}

impl<'de, I: Iterator<Item = (Node<'de>, Node<'de>)>> de::MapAccess<'de> for Items<'de, I> {
    type Error = DeError;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, DeError> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        key.seed(seed).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, DeError> {
        match self.value.take() {
            Some(value) => value.seed(seed),
            None => Err(de::Error::custom("a value was asked for before its key")),
        }
    }
}

//! An upcaster's definition, its checks, and the SQL generated from it (docs/ARCHITECTURE.md,
//! "Upcasting"). The expressions are the user's text: they reach SQL only inside generated
//! functions whose body is exactly the text `PREPARE` accepted as one statement.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::{
    error::{Error, FieldViolation, Result},
    projection::name::ProjectionName,
    store::validate,
};

/// The metadata key that holds an event's schema version.
pub const VERSION_KEY: &str = "schema_version";
/// The most upcasters one event passes through; registration refuses cycles, so only a chain
/// this long could reach it.
pub const MAX_CHAIN: usize = 32;
/// The dollar quote of the generated functions' bodies, which no expression may contain.
const BODY_TAG: &str = "$highwater_upcaster$";
/// How every dollar quote of the generated SQL starts, which no type or version may contain.
const GENERATED_TAG_PREFIX: &str = "$highwater_";
/// The longest schema version.
const MAX_VERSION_LEN: usize = 64;

/// One upcaster: events of `event_type` (of schema version `from_version`, or any) are read as
/// `to_type` (of `to_version`, or the version they had), with the data `data` computes and the
/// metadata `metadata` computes, both SQL expressions over `$data` and `$metadata` (jsonb).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpcasterDefinition {
    pub name: ProjectionName,
    pub event_type: String,
    #[serde(default)]
    pub from_version: Option<String>,
    #[serde(default)]
    pub to_type: Option<String>,
    #[serde(default)]
    pub to_version: Option<String>,
    pub data: String,
    #[serde(default)]
    pub metadata: Option<String>,
}

/// Which of an upcaster's expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expression {
    Data,
    Metadata,
}

impl Expression {
    pub fn field(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Metadata => "metadata",
        }
    }
}

impl UpcasterDefinition {
    /// A definition in the TOML format of upcaster files.
    pub fn from_toml(text: &str, source: &str) -> Result<Self> {
        let definition: Self = toml::from_str(text)
            .map_err(|error| Error::invalid("toml", format!("{source}: {}", error.message())))?;
        definition.check()?;
        Ok(definition)
    }

    /// The type events have after this upcaster.
    pub fn target_type(&self) -> &str {
        self.to_type.as_deref().unwrap_or(&self.event_type)
    }

    /// Checks the definition on its own (the set it joins is checked by [`check_set`]).
    pub fn check(&self) -> Result<()> {
        let mut violations = Vec::new();
        validate::check_type_name("event_type", &self.event_type, &mut violations);
        if let Some(to_type) = &self.to_type {
            validate::check_type_name("to_type", to_type, &mut violations);
        }
        for (field, text) in [
            ("event_type", Some(&self.event_type)),
            ("to_type", self.to_type.as_ref()),
            ("from_version", self.from_version.as_ref()),
            ("to_version", self.to_version.as_ref()),
        ] {
            // Spliced into generated functions as literals: a backslash would mean something else
            // with standard_conforming_strings off, and the bodies' dollar quotes start so.
            if text.is_some_and(|t| t.contains('\\') || t.contains(GENERATED_TAG_PREFIX)) {
                violations.push(FieldViolation::new(
                    field,
                    format!(
                        "a type or version read through an upcaster must contain neither a backslash nor {GENERATED_TAG_PREFIX}"
                    ),
                ));
            }
        }
        for (field, version) in [
            ("from_version", &self.from_version),
            ("to_version", &self.to_version),
        ] {
            if let Some(version) = version
                && (version.is_empty()
                    || version.len() > MAX_VERSION_LEN
                    || version.chars().any(|c| c.is_control() || c == '\\'))
            {
                violations.push(FieldViolation::new(
                    field,
                    format!(
                        "a schema version is 1 to {MAX_VERSION_LEN} bytes, with no control character or backslash"
                    ),
                ));
            }
        }
        for (expression, text) in [
            (Expression::Data, Some(&self.data)),
            (Expression::Metadata, self.metadata.as_ref()),
        ] {
            let Some(text) = text else { continue };
            if let Some(problem) = expression_problem(text) {
                violations.push(FieldViolation::new(expression.field(), problem));
            }
        }
        let same_type = self.target_type() == self.event_type;
        match (&self.from_version, &self.to_version) {
            (None, _) if same_type => violations.push(FieldViolation::new(
                "to_type",
                "an upcaster of every version of a type must change the type, or it would read its own output again",
            )),
            (Some(from), to) if same_type && to.as_ref().is_none_or(|to| to == from) => {
                violations.push(FieldViolation::new(
                    "to_version",
                    "an upcaster that keeps the type must change the version",
                ))
            }
            _ => {}
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(violations))
        }
    }

    /// The expression as the body of its generated function: `$data` and `$metadata` become
    /// the function's parameters.
    pub fn statement(&self, expression: Expression) -> Option<String> {
        let text = match expression {
            Expression::Data => &self.data,
            Expression::Metadata => self.metadata.as_ref()?,
        };
        Some(format!("SELECT (\n{}\n)", substitute(text)))
    }

    /// The generated function of an expression, as a qualified name.
    pub fn function(&self, expression: Expression) -> String {
        format!("highwater_upcasters.{}_{}", expression.field(), self.name)
    }

    /// `CREATE OR REPLACE FUNCTION` of an expression: it runs as its owner (the upcaster role,
    /// given by `highwater_upcaster_own`), STABLE (so it can change no table), with a fixed
    /// search path.
    pub fn function_sql(&self, expression: Expression) -> Option<String> {
        let statement = self.statement(expression)?;
        Some(format!(
            "CREATE OR REPLACE FUNCTION {}(jsonb, jsonb) RETURNS jsonb
             LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
             AS {BODY_TAG}{statement}{BODY_TAG}",
            self.function(expression)
        ))
    }
}

/// Why an expression cannot be an upcaster's, if it cannot.
fn expression_problem(text: &str) -> Option<String> {
    if text.trim().is_empty() {
        return Some("an expression is required".into());
    }
    if text.contains(BODY_TAG) {
        return Some(format!("must not contain {BODY_TAG}"));
    }
    // As for handlers: how PostgreSQL splits text with a backslash depends on a setting that
    // SQL can change (docs/ARCHITECTURE.md, "The projection sandbox").
    if text.contains('\\') {
        return Some("must not contain a backslash (use chr(92))".into());
    }
    None
}

/// `$data` becomes `$1` and `$metadata` `$2`, where neither continues as a longer name.
fn substitute(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let word_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        match &after[..word_len] {
            "data" => out.push_str("$1"),
            "metadata" => out.push_str("$2"),
            word => {
                out.push('$');
                out.push_str(word);
            }
        }
        rest = &after[word_len..];
    }
    out.push_str(rest);
    out
}

/// What an event's state is known to be while following a chain at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Version {
    Known(String),
    /// Whatever the event came with: any versioned upcaster of the type may match.
    Unknown,
}

/// Checks a whole set: one upcaster per source, and no chain that comes back to an upcaster it
/// passed (which would upcast forever).
pub fn check_set(all: &[UpcasterDefinition]) -> Result<()> {
    let mut sources = BTreeSet::new();
    for upcaster in all {
        if !sources.insert((&upcaster.event_type, &upcaster.from_version)) {
            let other = all
                .iter()
                .find(|u| {
                    u.name != upcaster.name
                        && u.event_type == upcaster.event_type
                        && u.from_version == upcaster.from_version
                })
                .map_or("another", |u| u.name.as_str());
            return Err(Error::invalid(
                "event_type",
                format!(
                    "upcaster {other} already reads {} events{}",
                    upcaster.event_type,
                    version_text(&upcaster.from_version)
                ),
            ));
        }
    }
    for start in all {
        let mut path = vec![start.name.as_str()];
        follow(all, start, &mut path)?;
    }
    Ok(())
}

fn follow<'a>(
    all: &'a [UpcasterDefinition],
    step: &'a UpcasterDefinition,
    path: &mut Vec<&'a str>,
) -> Result<()> {
    // The version is written after the metadata expression; without one, a metadata expression
    // can set any version (found by review: a circle through it passed this check).
    let version = match (&step.to_version, &step.metadata, &step.from_version) {
        (Some(to), _, _) => Version::Known(to.clone()),
        (None, None, Some(from)) => Version::Known(from.clone()),
        (None, _, _) => Version::Unknown,
    };
    for next in matches(all, step.target_type(), &version) {
        if path.contains(&next.name.as_str()) {
            path.push(next.name.as_str());
            return Err(Error::invalid(
                "to_type",
                format!("upcasters would run in a circle: {}", path.join(" -> ")),
            ));
        }
        if path.len() >= MAX_CHAIN {
            return Err(Error::invalid(
                "to_type",
                format!("a chain of upcasters is at most {MAX_CHAIN} long"),
            ));
        }
        path.push(next.name.as_str());
        follow(all, next, path)?;
        path.pop();
    }
    Ok(())
}

/// The upcasters an event of `event_type` in `version` may meet next (as the dispatcher picks:
/// a versioned one first, else the one for every version).
fn matches<'a>(
    all: &'a [UpcasterDefinition],
    event_type: &str,
    version: &Version,
) -> Vec<&'a UpcasterDefinition> {
    let of_type = all.iter().filter(|u| u.event_type == event_type);
    match version {
        Version::Known(version) => {
            let exact: Vec<_> = of_type
                .clone()
                .filter(|u| u.from_version.as_ref() == Some(version))
                .collect();
            if exact.is_empty() {
                of_type.filter(|u| u.from_version.is_none()).collect()
            } else {
                exact
            }
        }
        Version::Unknown => of_type.collect(),
    }
}

fn version_text(version: &Option<String>) -> String {
    version
        .as_ref()
        .map_or_else(String::new, |v| format!(" of version {v}"))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The two dispatchers, which follow the chain of an event (at most [`MAX_CHAIN`] steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatcher {
    /// `highwater_upcasters.upcast`: fails with SQLSTATE `HWU01` naming the upcaster and the
    /// event when a step fails, finds no JSON, or returns what an event cannot hold. Each step
    /// runs in an exception block (a subtransaction). Projections call this one.
    Checked,
    /// `highwater_upcasters.upcast_fast`: the same without the exception blocks, so an
    /// expression's own error comes as PostgreSQL raised it; reads call this one and, when it
    /// fails, read the page again through the checked one to name the upcaster and the event
    /// (about half the cost per event, measured with psql on 200,000 events).
    Fast,
}

impl Dispatcher {
    pub fn function(self) -> &'static str {
        match self {
            Self::Checked => "highwater_upcasters.upcast",
            Self::Fast => "highwater_upcasters.upcast_fast",
        }
    }
}

/// The dispatcher of the set. Types and versions were checked to hold no backslash, so the
/// literals mean the same whatever the session's settings.
pub fn dispatcher_sql(all: &[UpcasterDefinition], dispatcher: Dispatcher) -> String {
    let mut choose = String::new();
    // Versioned upcasters first: they win over the one for every version of their type.
    let mut ordered: Vec<&UpcasterDefinition> = all.iter().collect();
    ordered.sort_by_key(|u| (u.from_version.is_none(), u.name.as_str().to_string()));
    for upcaster in &ordered {
        let version_test = upcaster.from_version.as_ref().map_or(String::new(), |v| {
            format!(" AND metadata->>'{VERSION_KEY}' = {}", quote_literal(v))
        });
        choose.push_str(&format!(
            "                WHEN type = {}{version_test} THEN {}\n",
            quote_literal(&upcaster.event_type),
            quote_literal(&upcaster.name)
        ));
    }
    let mut steps = String::new();
    for upcaster in all {
        let metadata = match upcaster.metadata {
            Some(_) => format!(
                "next_metadata := {}(doc, metadata);
                check_metadata := true;",
                upcaster.function(Expression::Metadata)
            ),
            // The stored metadata is an object of strings already: nothing to check (a query per
            // event that is most of a step's cost).
            None => "next_metadata := metadata;
                check_metadata := false;"
                .to_string(),
        };
        let version = upcaster.to_version.as_ref().map_or(String::new(), |v| {
            format!(
                "next_metadata := jsonb_set(next_metadata, '{{{VERSION_KEY}}}', to_jsonb({}::text));",
                quote_literal(v)
            )
        });
        steps.push_str(&format!(
            "            WHEN {name} THEN
                {metadata}
                doc := {data}(doc, metadata);
                {version}
                type := {to_type};
",
            name = quote_literal(&upcaster.name),
            data = upcaster.function(Expression::Data),
            to_type = quote_literal(upcaster.target_type()),
        ));
    }
    let (begin, catch) = match dispatcher {
        Dispatcher::Checked => (
            "BEGIN",
            "EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'upcaster % failed on the event at position % (stream %, revision %): %',
                step, p_position, p_stream, p_revision, SQLERRM USING ERRCODE = 'HWU01';
        END;",
        ),
        Dispatcher::Fast => ("", ""),
    };
    let function = dispatcher.function();
    let body = if all.is_empty() {
        String::new()
    } else {
        format!(
            "    LOOP
        step := CASE
{choose}                ELSE NULL END;
        EXIT WHEN step IS NULL;
        steps := steps + 1;
        IF steps > {MAX_CHAIN} THEN
            RAISE EXCEPTION 'event at position % (stream %, revision %) passed {MAX_CHAIN} upcasters',
                p_position, p_stream, p_revision USING ERRCODE = 'HWU01';
        END IF;
        IF doc IS NULL THEN
            essence := translate(btrim(split_part(p_content_type, ';', 1), ' '),
                                 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz');
            IF NOT (essence = 'application/json' OR essence LIKE '%/%+json') THEN
                RAISE EXCEPTION 'upcaster % cannot read the event at position % (stream %, revision %): its content type % is not JSON',
                    step, p_position, p_stream, p_revision, p_content_type USING ERRCODE = 'HWU01';
            END IF;
        END IF;
        {begin}
            IF doc IS NULL THEN
                doc := convert_from(data, 'UTF8')::jsonb;
            END IF;
            CASE step
{steps}            END CASE;
        {catch}
        IF doc IS NULL THEN
            RAISE EXCEPTION 'upcaster % made no data of the event at position % (stream %, revision %)',
                step, p_position, p_stream, p_revision USING ERRCODE = 'HWU01';
        END IF;
        IF check_metadata AND (next_metadata IS NULL OR jsonb_typeof(next_metadata) <> 'object'
           OR EXISTS (SELECT FROM jsonb_each(next_metadata) m WHERE jsonb_typeof(m.value) <> 'string')) THEN
            RAISE EXCEPTION 'upcaster % made metadata of the event at position % (stream %, revision %) that is not an object of strings',
                step, p_position, p_stream, p_revision USING ERRCODE = 'HWU01';
        END IF;
        metadata := next_metadata;
    END LOOP;
    IF doc IS NOT NULL THEN
        data := convert_to(doc::text, 'UTF8');
    END IF;
"
        )
    };
    format!(
        "CREATE OR REPLACE FUNCTION {function}(
    p_position bigint, p_stream text, p_revision bigint, p_type text, p_data bytea,
    p_content_type text, p_metadata jsonb,
    OUT type text, OUT data bytea, OUT metadata jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $highwater_dispatch$
DECLARE
    doc jsonb;
    next_metadata jsonb;
    check_metadata boolean;
    step text;
    steps integer := 0;
    essence text;
BEGIN
    type := p_type;
    data := p_data;
    metadata := p_metadata;
{body}END
$highwater_dispatch$"
    )
}

/// `highwater_upcasters.sources()`: the event types some upcaster reads.
pub fn sources_sql(all: &[UpcasterDefinition]) -> String {
    let types: BTreeSet<&str> = all.iter().map(|u| u.event_type.as_str()).collect();
    let list = types
        .iter()
        .map(|t| quote_literal(t))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "CREATE OR REPLACE FUNCTION highwater_upcasters.sources() RETURNS text[]
         LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
         AS $highwater_sources$ SELECT ARRAY[{list}]::text[] $highwater_sources$"
    )
}

/// Every (source type, type it can become) pair, through any chain (versions ignored, so a
/// pair may be one no event takes: more events are passed to an apply function, never fewer).
pub fn reach(all: &[UpcasterDefinition]) -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    let sources: BTreeSet<&str> = all.iter().map(|u| u.event_type.as_str()).collect();
    for source in sources {
        let mut pending = vec![source];
        let mut seen = BTreeSet::new();
        while let Some(current) = pending.pop() {
            for next in all.iter().filter(|u| u.event_type == current) {
                let target = next.target_type();
                if seen.insert(target) {
                    pairs.insert((source.to_string(), target.to_string()));
                    pending.push(target);
                }
            }
        }
    }
    pairs
}

/// `highwater_upcasters.sources_reaching(types)`: the source types whose events some chain can
/// turn into one of `types`. An apply function is passed those and its handlers' own, so that
/// an upcaster failing on events no handler of it would see never fails it (found by review).
pub fn reaching_sql(all: &[UpcasterDefinition]) -> String {
    let pairs = reach(all);
    let body = if pairs.is_empty() {
        "SELECT '{}'::text[]".to_string()
    } else {
        let values = pairs
            .iter()
            .map(|(source, target)| {
                format!("({}, {})", quote_literal(source), quote_literal(target))
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT coalesce(array_agg(DISTINCT r.source), '{{}}'::text[])
               FROM (VALUES {values}) AS r(source, target) WHERE r.target = ANY(targets)"
        )
    };
    format!(
        "CREATE OR REPLACE FUNCTION highwater_upcasters.sources_reaching(targets text[])
         RETURNS text[] LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
         AS $highwater_sources$ {body} $highwater_sources$"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reach_follows_chains_through_types() {
        let all = [
            upcaster("a", ("A", None), ("B", None)),
            upcaster("b", ("B", Some("1")), ("C", None)),
            upcaster("x", ("X", None), ("Y", None)),
        ];
        let pairs: Vec<(String, String)> = reach(&all).into_iter().collect();
        let expected = [("A", "B"), ("A", "C"), ("B", "C"), ("X", "Y")]
            .map(|(s, t)| (s.to_string(), t.to_string()));
        assert_eq!(pairs, expected);
    }

    fn upcaster(
        name: &str,
        from: (&str, Option<&str>),
        to: (&str, Option<&str>),
    ) -> UpcasterDefinition {
        UpcasterDefinition {
            name: ProjectionName::parse(name).unwrap(),
            event_type: from.0.into(),
            from_version: from.1.map(Into::into),
            to_type: Some(to.0.into()),
            to_version: to.1.map(Into::into),
            data: "$data".into(),
            metadata: None,
        }
    }

    #[test]
    fn parameters_are_substituted_as_whole_words() {
        assert_eq!(
            substitute("$data || $metadata || $datas || $1 || '$metadata_x'"),
            "$1 || $2 || $datas || $1 || '$metadata_x'"
        );
    }

    #[test]
    fn a_chain_is_accepted_and_a_circle_refused() {
        let chain = [
            upcaster("one", ("T", Some("1")), ("T", Some("2"))),
            upcaster("two", ("T", Some("2")), ("T", Some("3"))),
        ];
        check_set(&chain).unwrap();
        let mut circle = chain.to_vec();
        circle.push(upcaster("back", ("T", Some("3")), ("T", Some("1"))));
        let error = check_set(&circle).unwrap_err().to_string();
        assert!(error.contains("circle"), "{error}");
        // Every version of A becomes B, B's versions go back to A: a circle through unknown
        // versions.
        let unknown = [
            upcaster("a", ("A", None), ("B", None)),
            upcaster("b", ("B", Some("7")), ("A", Some("7"))),
        ];
        assert!(check_set(&unknown).is_err());
        // A metadata expression may set any version: found by review.
        let mut through_metadata = [
            upcaster("a", ("A", Some("1")), ("B", None)),
            upcaster("b", ("B", Some("9")), ("A", Some("1"))),
        ];
        through_metadata[0].metadata = Some("$metadata || '{\"schema_version\": \"9\"}'".into());
        check_set(&through_metadata).unwrap_err();
        through_metadata[0].metadata = None;
        check_set(&through_metadata).unwrap();
    }

    #[test]
    fn types_and_versions_cannot_open_a_dollar_quote() {
        let mut quoting = upcaster("q", ("T$highwater_dispatch$", Some("1")), ("T", Some("2")));
        assert!(quoting.check().is_err());
        quoting.event_type = "T".into();
        quoting.to_version = Some("$highwater_sources$".into());
        assert!(quoting.check().is_err());
    }

    #[test]
    fn an_upcaster_must_change_what_it_reads() {
        assert!(
            upcaster("same", ("T", Some("1")), ("T", Some("1")))
                .check()
                .is_err()
        );
        assert!(
            upcaster("every", ("T", None), ("T", Some("2")))
                .check()
                .is_err()
        );
        assert!(
            upcaster("ok", ("T", Some("1")), ("T", Some("2")))
                .check()
                .is_ok()
        );
    }

    #[test]
    fn two_upcasters_of_one_source_are_refused() {
        let twice = [
            upcaster("a", ("T", Some("1")), ("T", Some("2"))),
            upcaster("b", ("T", Some("1")), ("U", None)),
        ];
        assert!(check_set(&twice).is_err());
    }
}

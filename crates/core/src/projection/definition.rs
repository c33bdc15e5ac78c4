//! Projection definitions: parsing (TOML files or the admin API), validation, and the translation
//! of handler SQL with named parameters into positional SQL.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::name::ProjectionName;
use crate::error::{Error, FieldViolation, Result};

/// The schema holding read-model tables and views.
pub const SCHEMA: &str = "projections";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Applied inside the append's transaction: the read model commits with the events.
    Inline,
    /// Applied by a worker following the log, in batches.
    Async,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inline => "inline",
            Self::Async => "async",
        }
    }
}

/// What happens when a handler fails on an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Inline: the append fails. Async: the projection stops as `failed`.
    #[default]
    Fail,
    /// The event is recorded as a dead letter and processing goes on.
    Skip,
}

/// A projection definition as written by its author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Checked when it is made (deserialized or parsed): it is spliced into SQL identifiers.
    pub name: ProjectionName,
    #[serde(default = "first_version")]
    pub version: i32,
    pub mode: Mode,
    #[serde(default)]
    pub on_error: OnError,
    /// SQL creating the version's table; `{{table}}` stands for it.
    pub setup: String,
    /// One SQL statement per event type.
    pub handlers: BTreeMap<String, String>,
    /// Where the definition came from (a file path, or `api`), for error messages.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

fn first_version() -> i32 {
    1
}

/// The parameters a handler may use, and how each is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    Stream,
    Data,
    Metadata,
    Position,
    Revision,
    Type,
    RecordedAt,
    Id,
}

impl Param {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "stream" => Self::Stream,
            "data" => Self::Data,
            "metadata" => Self::Metadata,
            "position" => Self::Position,
            "revision" => Self::Revision,
            "type" => Self::Type,
            "recorded_at" => Self::RecordedAt,
            "id" => Self::Id,
            _ => return None,
        })
    }

    /// The SQL expression for positional parameter `n`, typed so PostgreSQL needs no inference.
    fn expression(self, n: usize) -> String {
        match self {
            Self::Stream | Self::Type => format!("(${n}::text)"),
            Self::Data => format!("(convert_from(${n}::bytea, 'UTF8')::jsonb)"),
            Self::Metadata => format!("(${n}::text::jsonb)"),
            Self::Position | Self::Revision => format!("(${n}::bigint)"),
            Self::RecordedAt => format!("(to_timestamp(${n}::bigint / 1000000.0))"),
            Self::Id => format!("(${n}::uuid)"),
        }
    }
}

/// A handler ready to run: positional SQL and the parameters to bind, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    pub sql: String,
    pub params: Vec<Param>,
}

impl Definition {
    /// Parses a TOML definition; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Self> {
        let mut definition: Definition = toml::from_str(text)
            .map_err(|error| Error::invalid("definition", format!("{source}: {error}")))?;
        definition.source = source.to_string();
        definition.validate()?;
        Ok(definition)
    }

    /// Where the definition came from (its file, or `api`), as messages name it.
    pub fn origin(&self) -> &str {
        if self.source.is_empty() {
            "definition"
        } else {
            &self.source
        }
    }

    /// Checks names and handlers; errors name the source and the handler.
    pub fn validate(&self) -> Result<()> {
        let mut violations = Vec::new();
        let source = self.origin();
        if self.version < 1 {
            violations.push(FieldViolation::new(
                "version",
                format!("{source}: must be at least 1"),
            ));
        }
        if !self.setup.contains("{{table}}") {
            violations.push(FieldViolation::new(
                "setup",
                format!("{source}: must create {{{{table}}}}"),
            ));
        }
        if self.handlers.is_empty() {
            violations.push(FieldViolation::new(
                "handlers",
                format!("{source}: at least one handler is required"),
            ));
        }
        for (event_type, sql) in &self.handlers {
            // How PostgreSQL splits text with a backslash into statements depends on
            // standard_conforming_strings, which an earlier handler in the same call can change:
            // a handler checked as one statement could run as several.
            if sql.contains('\\') {
                violations.push(FieldViolation::new(
                    format!("handlers.{event_type}"),
                    format!(
                        "{source}: handler {event_type}: must not contain a backslash (use chr(92))"
                    ),
                ));
                continue;
            }
            if let Err(problem) = translate(sql, "t") {
                violations.push(FieldViolation::new(
                    format!("handlers.{event_type}"),
                    format!("{source}: handler {event_type}: {problem}"),
                ));
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(violations))
        }
    }

    /// The projection's own schema, `projection_<name>`: its tables and functions live there,
    /// and only its sandbox role may use it (docs/ARCHITECTURE.md, "The projection sandbox").
    pub fn schema(&self) -> String {
        format!("projection_{}", self.name)
    }

    /// The table of `version`: `projection_<name>.v<version>`.
    pub fn table(&self, version: i32) -> String {
        format!("{}.v{version}", self.schema())
    }

    /// The view with the plain name, on the active version.
    pub fn view(&self) -> String {
        format!("{SCHEMA}.{}", self.name)
    }

    pub fn setup_sql(&self, version: i32) -> String {
        self.setup.replace("{{table}}", &self.table(version))
    }

    /// Every handler of `version`, translated.
    pub fn handlers_for(&self, version: i32) -> Result<BTreeMap<String, Handler>> {
        let table = self.table(version);
        self.handlers
            .iter()
            .map(|(event_type, sql)| {
                translate(sql, &table)
                    .map(|handler| (event_type.clone(), handler))
                    .map_err(|problem| Error::invalid(format!("handlers.{event_type}"), problem))
            })
            .collect()
    }
}

/// Replaces `{{table}}` and the named parameters (`$stream`, `$data`...) with positional ones.
pub fn translate(sql: &str, table: &str) -> std::result::Result<Handler, String> {
    let mut params: Vec<Param> = Vec::new();
    let sql = substitute(sql, table, |param| {
        let index = match params.iter().position(|p| *p == param) {
            Some(index) => index,
            None => {
                params.push(param);
                params.len() - 1
            }
        };
        param.expression(index + 1)
    })?;
    Ok(Handler { sql, params })
}

/// Replaces `{{table}}`, and each named parameter with what `replace` gives for it.
fn substitute(
    sql: &str,
    table: &str,
    mut replace: impl FnMut(Param) -> String,
) -> std::result::Result<String, String> {
    let sql = sql.replace("{{table}}", table);
    if sql.trim().is_empty() {
        return Err("must not be empty".into());
    }
    let mut out = String::with_capacity(sql.len() + 32);
    let mut rest = sql.as_str();
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "positional parameter ${name}: use the named parameters ($stream, $data, ...)"
            ));
        }
        match Param::from_name(name) {
            Some(param) => out.push_str(&replace(param)),
            None if name.is_empty() => out.push('$'),
            None => {
                return Err(format!(
                    "unknown parameter ${name}; known: $stream, $data, $metadata, $position, $revision, $type, $recorded_at, $id"
                ));
            }
        }
        rest = &after[name_len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The dollar-quote tag of generated apply functions; handlers may not contain it.
const BODY_TAG: &str = "$highwater_apply$";

impl Definition {
    /// The generated function that applies a range of the log to `version` inside PostgreSQL.
    pub fn apply_function(&self, version: i32) -> String {
        format!("{}.highwater_apply_v{version}", self.schema())
    }

    /// `CREATE OR REPLACE FUNCTION` for the version's apply function: it walks the events in
    /// (`p_after`, `p_upto`] with a handler, at most `p_limit`, and runs each handler as static
    /// SQL (planned once per session, no round trip per event). It returns one `failed` row per
    /// failing event (with `p_collect`, each event in its own subtransaction; without, the first
    /// failure undoes the call), then a `done` row with the count and the last position.
    pub fn apply_function_sql(&self, version: i32) -> std::result::Result<String, String> {
        let table = self.table(version);
        let mut cases = String::new();
        for (event_type, sql) in &self.handlers {
            if sql.contains(BODY_TAG) {
                return Err(format!("handler {event_type} contains {BODY_TAG}"));
            }
            let statement = substitute(sql, &table, |param| {
                match param {
                    Param::Stream => "ev.stream",
                    Param::Data => "ev_data",
                    Param::Metadata => "ev.metadata",
                    Param::Position => "ev.position",
                    Param::Revision => "ev.revision",
                    Param::Type => "ev.type",
                    Param::RecordedAt => "ev.recorded_at",
                    Param::Id => "ev.id",
                }
                .to_string()
            })?;
            let statement = statement.trim().trim_end_matches(';');
            cases.push_str(&format!(
                "            WHEN {} THEN
{statement};
",
                quote_literal(event_type)
            ));
        }
        let types = self
            .handlers
            .keys()
            .map(|t| quote_literal(t))
            .collect::<Vec<_>>()
            .join(", ");
        let apply = format!(
            "-- Read through the upcasters (docs/ARCHITECTURE.md, \"Upcasting\"), inside the
            -- event's own block: an upcaster's failure is this event's failure (a dead letter with
            -- on_error = \"skip\"), never the whole call's.
            IF ev.type = ANY(upcast_types) THEN
                SELECT u.type, u.data, u.metadata INTO upcast
                  FROM highwater_upcasters.upcast(ev.position, ev.stream, ev.revision, ev.type,
                                                  ev.data, ev.content_type, ev.metadata) u;
                ev.type := upcast.type;
                ev.data := upcast.data;
                ev.metadata := upcast.metadata;
            END IF;
            -- The same rule as validate::is_json_content_type, in ASCII whatever the locale.
            ev_essence := translate(btrim(split_part(ev.content_type, ';', 1), ' '),
                                    'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz');
            ev_data := CASE WHEN ev_essence = 'application/json' OR ev_essence LIKE '%/%+json'
                            THEN convert_from(ev.data, 'UTF8')::jsonb END;
            CASE ev.type
{cases}            ELSE
                NULL; -- an upcast source whose upcast type has no handler
            END CASE;"
        );
        Ok(format!(
            "CREATE OR REPLACE FUNCTION {function}(p_after bigint, p_upto bigint, p_limit integer, p_collect boolean)
RETURNS TABLE (r_kind text, r_count integer, r_position bigint, r_type text, r_message text)
LANGUAGE plpgsql
-- Runs as the projection's sandbox role (its owner), where no statement can change role.
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS {BODY_TAG}
DECLARE
    ev      record;
    ev_data jsonb;
    ev_essence text;
    ev_type text;
    applied integer := 0;
    last    bigint := p_after;
    -- Events of these types are read through the upcasters (docs/ARCHITECTURE.md, \"Upcasting\").
    upcast_types text[] := highwater_upcasters.sources();
    -- Of those, the ones a chain can turn into a type handled here: the others never reach a
    -- handler, and an upcaster failing on them must not fail this projection.
    reaching text[] := highwater_upcasters.sources_reaching(ARRAY[{types}]::text[]);
    upcast  record;
BEGIN
    BEGIN
        FOR ev IN SELECT e.position, e.stream, e.revision, e.id, e.type, e.data, e.content_type,
                         e.metadata, e.recorded_at
                    FROM public.events e
                   WHERE e.position > p_after AND e.position <= p_upto
                     AND (e.type IN ({types}) OR e.type = ANY(reaching))
                   ORDER BY e.position LIMIT p_limit
        LOOP
            last := ev.position;
            ev_type := ev.type;
            IF p_collect THEN
                BEGIN
                    {apply}
                EXCEPTION WHEN OTHERS THEN
                    r_kind := 'failed'; r_position := ev.position; r_type := ev.type; r_message := SQLERRM;
                    RETURN NEXT;
                END;
            ELSE
                {apply}
            END IF;
            applied := applied + 1;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        r_kind := 'failed'; r_position := last; r_type := ev_type; r_message := SQLERRM;
        RETURN NEXT;
        RETURN;
    END;
    r_kind := 'done'; r_count := applied; r_position := last; r_type := NULL; r_message := NULL;
    RETURN NEXT;
END;
{BODY_TAG}",
            function = self.apply_function(version),
        ))
    }
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_parameters_become_typed_positional_ones() {
        let handler = translate(
            "INSERT INTO {{table}} (id, n) VALUES ($stream, ($data->>'n')::int) ON CONFLICT (id) DO UPDATE SET n = {{table}}.n + ($data->>'n')::int, at = $recorded_at",
            "projections.x_v1",
        )
        .unwrap();
        assert_eq!(
            handler.params,
            [Param::Stream, Param::Data, Param::RecordedAt]
        );
        assert!(handler.sql.starts_with("INSERT INTO projections.x_v1 (id, n) VALUES (($1::text), ((convert_from($2::bytea, 'UTF8')::jsonb)->>'n')::int)"));
        assert!(
            handler
                .sql
                .contains("SET n = projections.x_v1.n + ((convert_from($2::bytea")
        );
        assert!(
            handler
                .sql
                .ends_with("at = (to_timestamp($3::bigint / 1000000.0))")
        );
    }

    #[test]
    fn unknown_and_positional_parameters_are_rejected() {
        assert!(
            translate("SELECT $streem", "t")
                .unwrap_err()
                .contains("unknown parameter $streem")
        );
        assert!(
            translate("SELECT $1", "t")
                .unwrap_err()
                .contains("positional")
        );
    }

    #[test]
    fn toml_definitions_parse_and_validate() {
        let text = r#"
            name = "cart_summary"
            mode = "inline"
            setup = "CREATE TABLE {{table}} (cart text PRIMARY KEY)"
            [handlers]
            ProductAdded = "INSERT INTO {{table}} VALUES ($stream) ON CONFLICT DO NOTHING"
        "#;
        let definition = Definition::from_toml(text, "cart.toml").unwrap();
        assert_eq!(
            (definition.version, definition.on_error),
            (1, OnError::Fail)
        );
        assert_eq!(definition.table(2), "projection_cart_summary.v2");

        let bad = text.replace("cart_summary", "Cart-Summary");
        let error = Definition::from_toml(&bad, "cart.toml")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cart.toml") && error.contains("name"),
            "{error}"
        );
        let bad = text.replace("($stream)", "($nope)");
        let error = Definition::from_toml(&bad, "cart.toml")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("handler ProductAdded") && error.contains("$nope"),
            "{error}"
        );
    }
}

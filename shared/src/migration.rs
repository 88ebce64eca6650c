//! Migrations as Warden understands them: versioned SQL files, the statements in them, and
//! the destructive guard that refuses deny-listed statements and commands.
//!
//! The CLI reads a directory into [`MigrationFile`]s, the coordinator validates them again
//! (it is the authority) and checks them against the guard, and the agent applies them. All
//! three use this one module, so they agree on names, order, checksums and statements.

use std::fmt;

use sha2::{Digest, Sha256};

/// A file containing this comment runs statement by statement outside a transaction (for
/// statements such as `CREATE INDEX CONCURRENTLY`).
pub const NO_TRANSACTION_MARKER: &str = "warden:no-transaction";

/// The most SQL one migration order may carry, over all its files. Orders travel in one gRPC
/// message to the coordinator and one to the agent, and are kept in the coordinator's store.
pub const MAX_MIGRATION_BYTES: usize = 2 * 1024 * 1024;

/// Schema and table where the agent records applied migrations in the target database.
pub const TRACKING_TABLE: &str = "warden.schema_migrations";

/// Statements the destructive guard refuses in guarded databases. `...` matches any tokens;
/// a pattern without a trailing `...` part matches the start of a statement.
pub const DEFAULT_DENY_SQL: [&str; 4] = [
    "DROP DATABASE",
    "DROP SCHEMA ... CASCADE",
    "TRUNCATE",
    "DROP OWNED",
];

/// Command-line fragments the destructive guard refuses in guarded databases: the "start
/// over" commands of common migration tools.
pub const DEFAULT_DENY_COMMANDS: [&str; 7] = [
    "migrate:fresh",
    "migrate:reset",
    "migrate:refresh",
    "db:wipe",
    "db:drop",
    "db:reset",
    "db:schema:load",
];

/// One versioned migration file, as sent with an order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MigrationFile {
    /// The leading digits of the file name, as written (`0001`).
    pub version: String,
    /// The rest of the file name without `.sql` (`create_users`).
    pub name: String,
    /// sha256 of the file's bytes, hex.
    pub sha256: String,
    pub sql: String,
}

/// Why a migration file or set of files is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MigrationError(pub String);

impl MigrationFile {
    /// Builds a migration from a file name such as `0001_create_users.sql` and its contents.
    pub fn from_file(file_name: &str, sql: String) -> Result<Self, MigrationError> {
        let (version, name) = parse_file_name(file_name)?;
        Ok(Self {
            version,
            name,
            sha256: sha256_hex(sql.as_bytes()),
            sql,
        })
    }

    /// The file name it came from.
    pub fn file_name(&self) -> String {
        format!("{}_{}.sql", self.version, self.name)
    }

    /// The version as a number, which orders migrations (`0002` before `10`).
    pub fn number(&self) -> u64 {
        self.version.parse().unwrap_or(u64::MAX)
    }

    /// Whether the file runs in one transaction (it has no no-transaction marker).
    pub fn transactional(&self) -> bool {
        !lex(&self.sql)
            .comments
            .iter()
            .any(|c| c.contains(NO_TRANSACTION_MARKER))
    }

    /// The file's statements, without comments, in order.
    pub fn statements(&self) -> Vec<String> {
        split_statements(&self.sql)
    }

    /// Checks what can be checked without a database: the name, the checksum, that it has
    /// statements, and that a transactional file does not manage transactions itself.
    pub fn validate(&self) -> Result<(), MigrationError> {
        let file = self.file_name();
        parse_file_name(&file)?;
        if sha256_hex(self.sql.as_bytes()) != self.sha256 {
            return Err(MigrationError(format!(
                "{file}: its sha256 does not match its contents; it changed in transit"
            )));
        }
        let statements = self.statements();
        if statements.is_empty() {
            return Err(MigrationError(format!(
                "{file}: it has no SQL statement; delete it or add its statements"
            )));
        }
        if self.transactional()
            && let Some(control) = statements.iter().find(|s| is_transaction_control(s))
        {
            return Err(MigrationError(format!(
                "{file}: it runs in its own transaction, so it may not contain {:?}; remove it, or add the comment `-- {NO_TRANSACTION_MARKER}` to run the file statement by statement",
                first_words(control, 2)
            )));
        }
        Ok(())
    }
}

/// Validates a set of migrations as one order carries them: each file, unique versions,
/// and the size limit. Returns them sorted by version.
pub fn validate_set(mut files: Vec<MigrationFile>) -> Result<Vec<MigrationFile>, MigrationError> {
    if files.is_empty() {
        return Err(MigrationError(
            "no migration files (NNNN_name.sql) were given".to_owned(),
        ));
    }
    let total: usize = files.iter().map(|f| f.sql.len()).sum();
    if total > MAX_MIGRATION_BYTES {
        return Err(MigrationError(format!(
            "the migrations hold {total} bytes of SQL, more than the {MAX_MIGRATION_BYTES} one order may carry; apply them in several steps"
        )));
    }
    for file in &files {
        file.validate()?;
    }
    files.sort_by_key(MigrationFile::number);
    for pair in files.windows(2) {
        if pair[0].number() == pair[1].number() {
            return Err(MigrationError(format!(
                "{} and {} have the same version; give each file its own number",
                pair[0].file_name(),
                pair[1].file_name()
            )));
        }
    }
    Ok(files)
}

/// Splits `0001_create_users.sql` into (`0001`, `create_users`).
pub fn parse_file_name(file_name: &str) -> Result<(String, String), MigrationError> {
    let bad = |why: &str| {
        MigrationError(format!(
            "{file_name:?} is not a migration file name: {why}; name files like 0001_create_users.sql"
        ))
    };
    let stem = file_name
        .strip_suffix(".sql")
        .ok_or_else(|| bad("it does not end in .sql"))?;
    let digits = stem.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad("it does not start with a version number"));
    }
    if digits > 18 {
        return Err(bad("its version number is longer than 18 digits"));
    }
    let (version, rest) = stem.split_at(digits);
    let name = rest
        .strip_prefix('_')
        .ok_or_else(|| bad("the version is not followed by '_'"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(bad(
            "the name after the version must be letters, digits, '_', '-' or '.'",
        ));
    }
    Ok((version.to_owned(), name.to_owned()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The destructive guard: deny patterns for SQL statements and command lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    pub sql: Vec<String>,
    pub commands: Vec<String>,
}

/// What the guard refused, and which pattern refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The statement (first words) or command line refused.
    pub what: String,
    pub pattern: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} matches deny pattern {:?}", self.what, self.pattern)
    }
}

impl Guard {
    /// The built-in deny lists plus `extra_sql` and `extra_commands`.
    pub fn with_defaults(extra_sql: &[String], extra_commands: &[String]) -> Self {
        Self {
            sql: DEFAULT_DENY_SQL
                .iter()
                .map(|s| (*s).to_owned())
                .chain(extra_sql.iter().cloned())
                .collect(),
            commands: DEFAULT_DENY_COMMANDS
                .iter()
                .map(|s| (*s).to_owned())
                .chain(extra_commands.iter().cloned())
                .collect(),
        }
    }

    /// The first statement of `sql` a deny pattern matches. Comments, string literals and
    /// quoted identifiers never match: only the statements' keywords do.
    pub fn check_sql(&self, sql: &str) -> Option<Violation> {
        let statements = split_statements(sql);
        statements.iter().find_map(|statement| {
            let words = words(statement);
            self.sql
                .iter()
                .find(|pattern| pattern_matches(pattern, &words))
                .map(|pattern| Violation {
                    what: first_words(statement, 8),
                    pattern: pattern.clone(),
                })
        })
    }

    /// The deny pattern a command line (its arguments joined by spaces) contains, if any.
    pub fn check_command(&self, argv: &[String]) -> Option<Violation> {
        let line = argv.join(" ");
        let lower = line.to_lowercase();
        self.commands
            .iter()
            .find(|pattern| !pattern.is_empty() && lower.contains(&pattern.to_lowercase()))
            .map(|pattern| Violation {
                what: line.clone(),
                pattern: pattern.clone(),
            })
    }
}

/// Checks that a deny pattern can match something: words and `...`, not starting with `...`.
pub fn validate_sql_pattern(pattern: &str) -> Result<(), MigrationError> {
    let words: Vec<&str> = pattern.split_whitespace().collect();
    match words.first() {
        None => Err(MigrationError("a deny pattern is empty".to_owned())),
        Some(&"...") => Err(MigrationError(format!(
            "deny pattern {pattern:?} starts with \"...\"; start it with the statement's first keyword"
        ))),
        Some(_) => Ok(()),
    }
}

/// Matches the statement's words against a pattern: its words before the first `...` are the
/// statement's first words, each part after a `...` follows later, and a pattern that does
/// not end in `...` but has one must match the statement's end.
fn pattern_matches(pattern: &str, words: &[String]) -> bool {
    let parts: Vec<Vec<String>> = pattern
        .split("...")
        .map(|part| part.split_whitespace().map(str::to_uppercase).collect())
        .collect();
    let Some((first, rest)) = parts.split_first() else {
        return false;
    };
    if !words.starts_with(first) {
        return false;
    }
    let mut at = first.len();
    for (i, part) in rest.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        let last = i + 1 == rest.len();
        if last {
            return words.len() >= at + part.len() && words.ends_with(part);
        }
        match (at..=words.len().saturating_sub(part.len()))
            .find(|&start| words[start..start + part.len()] == part[..])
        {
            Some(start) => at = start + part.len(),
            None => return false,
        }
    }
    true
}

/// The statement's words, upper-cased, with quoted identifiers and literals as placeholders
/// so that they never match a keyword.
fn words(statement: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = statement.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_alphanumeric() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || c == '_' || c == '$' {
                    word.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(word.to_uppercase());
        } else if c == '"' || c == '\'' {
            chars.next();
            for inner in chars.by_ref() {
                if inner == c {
                    break;
                }
            }
            out.push(if c == '"' { "<IDENT>" } else { "<LITERAL>" }.to_owned());
        } else {
            chars.next();
        }
    }
    out
}

/// The first `n` words of a statement, for messages.
pub fn first_words(statement: &str, n: usize) -> String {
    let words: Vec<&str> = statement.split_whitespace().take(n + 1).collect();
    if words.len() > n {
        format!("{} ...", words[..n].join(" "))
    } else {
        words.join(" ")
    }
}

fn is_transaction_control(statement: &str) -> bool {
    let words = words(statement);
    matches!(
        words.first().map(String::as_str),
        Some("BEGIN" | "COMMIT" | "ROLLBACK" | "END" | "ABORT")
    ) || words.starts_with(&["START".to_owned(), "TRANSACTION".to_owned()])
}

/// The statements of `sql`, without comments, in order: split at top-level semicolons the
/// way PostgreSQL reads them.
pub fn split_statements(sql: &str) -> Vec<String> {
    lex(sql).statements
}

/// A file split into statements (comments removed) and its comments.
struct Lexed {
    statements: Vec<String>,
    comments: Vec<String>,
}

/// Splits SQL into statements at top-level semicolons, the way PostgreSQL reads them:
/// semicolons inside string literals (also `E''` escapes), quoted identifiers, dollar-quoted
/// bodies and comments (nested block comments too) do not end a statement.
fn lex(sql: &str) -> Lexed {
    let chars: Vec<char> = sql.chars().collect();
    let mut statements = Vec::new();
    let mut comments = Vec::new();
    let mut current = String::new();
    let mut i = 0;
    // Semicolons inside parentheses (CREATE RULE ... DO (a; b)) and inside a SQL-standard
    // function body (BEGIN ATOMIC ... END, with CASE ... END inside) do not end a statement.
    let mut parens = 0usize;
    let mut atomic = 0usize;
    let mut cases = 0usize;
    let mut previous_word = String::new();
    let push_statement = |current: &mut String, statements: &mut Vec<String>| {
        let trimmed = current.trim();
        if !trimmed.is_empty() {
            statements.push(trimmed.to_owned());
        }
        current.clear();
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '-' if next == Some('-') => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '\n')
                    .map_or(chars.len(), |p| i + p);
                comments.push(chars[i + 2..end].iter().collect());
                current.push(' ');
                i = end;
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                let start = i;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                comments.push(chars[start..i.min(chars.len())].iter().collect());
                current.push(' ');
            }
            '\'' | '"' => {
                // E'...' strings take backslash escapes (`xe'` is a name and a quote).
                let escapes = c == '\''
                    && i > 0
                    && matches!(chars[i - 1], 'e' | 'E')
                    && (i < 2 || !is_identifier_char(chars[i - 2]));
                current.push(c);
                i += 1;
                while i < chars.len() {
                    let d = chars[i];
                    current.push(d);
                    i += 1;
                    if escapes && d == '\\' {
                        if let Some(&escaped) = chars.get(i) {
                            current.push(escaped);
                            i += 1;
                        }
                    } else if d == c {
                        // A doubled quote is an escaped quote, not the end.
                        if chars.get(i) == Some(&c) {
                            current.push(c);
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            '$' if dollar_tag(&chars, i).is_some() => {
                let tag = dollar_tag(&chars, i).unwrap_or_default();
                let tag_chars: Vec<char> = tag.chars().collect();
                current.push_str(&tag);
                i += tag_chars.len();
                loop {
                    if i >= chars.len() {
                        break;
                    }
                    if chars[i..].starts_with(&tag_chars) {
                        current.push_str(&tag);
                        i += tag_chars.len();
                        break;
                    }
                    current.push(chars[i]);
                    i += 1;
                }
            }
            ';' if parens == 0 && atomic == 0 => {
                push_statement(&mut current, &mut statements);
                previous_word.clear();
                i += 1;
            }
            '(' | ')' => {
                parens = if c == '(' {
                    parens + 1
                } else {
                    parens.saturating_sub(1)
                };
                current.push(c);
                i += 1;
            }
            c if is_identifier_start(c) && (i == 0 || !is_identifier_char(chars[i - 1])) => {
                let start = i;
                while i < chars.len() && is_identifier_char(chars[i]) {
                    i += 1;
                }
                // `E'...'` is a string with backslash escapes, lexed by the quote arm.
                if i - start == 1 && matches!(c, 'e' | 'E') && chars.get(i) == Some(&'\'') {
                    current.push(c);
                    continue;
                }
                let word: String = chars[start..i].iter().collect();
                current.push_str(&word);
                let upper = word.to_uppercase();
                match upper.as_str() {
                    "ATOMIC" if previous_word == "BEGIN" => atomic += 1,
                    "CASE" if atomic > 0 => cases += 1,
                    "END" if atomic > 0 => {
                        if cases > 0 {
                            cases -= 1;
                        } else {
                            atomic -= 1;
                        }
                    }
                    _ => {}
                }
                previous_word = upper;
            }
            _ => {
                current.push(c);
                i += 1;
            }
        }
    }
    push_statement(&mut current, &mut statements);
    Lexed {
        statements,
        comments,
    }
}

fn is_identifier_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

/// Letters, digits, `_` and `$` continue an identifier (`a$b` is one name).
fn is_identifier_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// The dollar-quote tag (`$$` or `$name$`) starting at `i`, if one does. A `$` that follows
/// an identifier character is part of the identifier or a parameter (`$1`), not a quote.
fn dollar_tag(chars: &[char], i: usize) -> Option<String> {
    if i > 0 && is_identifier_char(chars[i - 1]) {
        return None;
    }
    let mut j = i + 1;
    while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
        j += 1;
    }
    if chars.get(j) != Some(&'$') {
        return None;
    }
    if chars.get(i + 1).is_some_and(char::is_ascii_digit) {
        return None;
    }
    Some(chars[i..=j].iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, sql: &str) -> MigrationFile {
        MigrationFile::from_file(name, sql.to_owned()).expect("valid name")
    }

    #[test]
    fn file_names_give_version_and_name() {
        assert_eq!(
            parse_file_name("0001_create_users.sql"),
            Ok(("0001".to_owned(), "create_users".to_owned()))
        );
        for bad in [
            "create_users.sql",
            "0001create.sql",
            "0001_.sql",
            "0001_x.txt",
            "0001_a b.sql",
            "0001_a'b.sql",
            "0001_../x.sql",
        ] {
            assert!(parse_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statements_split_where_postgres_would() {
        let sql = "-- header; not a statement\nCREATE TABLE a (t text DEFAULT 'x;y');\n\
            /* block ; /* nested ; */ still */ INSERT INTO \"we;ird\" VALUES (E'it\\'s;');\n\
            CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n\
            DO $$ BEGIN PERFORM 1; END $$;\nSELECT 1";
        let statements = lex(sql).statements;
        assert_eq!(statements.len(), 5, "{statements:#?}");
        assert!(statements[1].starts_with("INSERT INTO \"we;ird\""));
        assert!(statements[2].ends_with("LANGUAGE sql"));
    }

    #[test]
    fn dollars_and_e_in_names_hide_no_statement() {
        // `a$$b$` is one identifier, `x$e` a name followed by a string: neither opens a
        // quoted body that would swallow the TRUNCATE.
        for sql in [
            "SELECT 1 AS a$$b$; TRUNCATE orders;",
            "CREATE DOMAIN x$e AS text; SELECT x$e'\\'; TRUNCATE orders; --'",
        ] {
            let guard = Guard::with_defaults(&[], &[]);
            assert!(
                guard.check_sql(sql).is_some(),
                "{sql}: {:?}",
                split_statements(sql)
            );
        }
        assert_eq!(split_statements("SELECT $1::int; SELECT 2").len(), 2);
    }

    #[test]
    fn function_bodies_and_rule_actions_stay_one_statement() {
        let sql = "CREATE FUNCTION f(x int) RETURNS text LANGUAGE sql\n\
            BEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN 'pos' ELSE 'neg' END;\n  SELECT 'x';\nEND;\n\
            CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2));\n\
            SELECT 3";
        let statements = split_statements(sql);
        assert_eq!(statements.len(), 3, "{statements:#?}");
        assert!(statements[0].ends_with("END"), "{statements:#?}");
        assert!(file("0001_f.sql", sql).validate().is_ok());
    }

    #[test]
    fn the_marker_comment_turns_transactions_off() {
        assert!(file("0001_a.sql", "CREATE TABLE a (id int);").transactional());
        let concurrent = file(
            "0002_idx.sql",
            "-- warden:no-transaction\nCREATE INDEX CONCURRENTLY i ON a (id);",
        );
        assert!(!concurrent.transactional());
        assert!(concurrent.validate().is_ok());
        // In a string it is not a marker.
        assert!(file("0003_s.sql", "SELECT '-- warden:no-transaction';").transactional());
    }

    #[test]
    fn transactional_files_may_not_manage_transactions() {
        let error = file("0001_a.sql", "BEGIN; CREATE TABLE a (id int); COMMIT;")
            .validate()
            .expect_err("refused");
        assert!(error.0.contains("0001_a.sql"), "{error}");
        assert!(error.0.contains(NO_TRANSACTION_MARKER), "{error}");
        assert!(file("0002_b.sql", "-- only a comment").validate().is_err());
        let mut tampered = file("0003_c.sql", "SELECT 1;");
        tampered.sql.push_str("DROP TABLE x;");
        assert!(tampered.validate().is_err());
    }

    #[test]
    fn sets_are_sorted_by_number_and_versions_are_unique() {
        let set = validate_set(vec![
            file("10_c.sql", "SELECT 1;"),
            file("0002_b.sql", "SELECT 1;"),
        ])
        .expect("valid");
        assert_eq!(set[0].version, "0002");
        assert!(
            validate_set(vec![
                file("0002_b.sql", "SELECT 1;"),
                file("2_c.sql", "SELECT 1;")
            ])
            .is_err()
        );
        assert!(validate_set(Vec::new()).is_err());
    }

    #[test]
    fn the_guard_matches_keywords_not_strings_or_comments() {
        let guard = Guard::with_defaults(
            &[
                "DELETE FROM ... ".to_owned(),
                "ALTER TABLE ... DROP COLUMN ...".to_owned(),
            ],
            &[],
        );
        for denied in [
            "drop database shop",
            "DROP SCHEMA app CASCADE",
            "drop schema if exists app, other cascade",
            "TRUNCATE orders",
            "truncate table orders restart identity",
            "CREATE TABLE t (id int); DELETE FROM t",
            "alter table only customers drop column email",
        ] {
            assert!(guard.check_sql(denied).is_some(), "{denied}");
        }
        for allowed in [
            "DROP SCHEMA app",
            "DROP SCHEMA app RESTRICT",
            "DROP TABLE truncate_log",
            "INSERT INTO notes VALUES ('TRUNCATE orders')",
            "-- TRUNCATE orders\nSELECT 1",
            "SELECT 1 /* drop database x; */",
            "CREATE TABLE \"truncate\" (id int)",
            "ALTER TABLE customers ADD COLUMN dropped_column text",
        ] {
            assert_eq!(guard.check_sql(allowed), None, "{allowed}");
        }
        let violation = guard.check_sql("TRUNCATE orders").expect("denied");
        assert_eq!(violation.pattern, "TRUNCATE");
    }

    #[test]
    fn the_guard_refuses_start_over_commands() {
        let guard = Guard::with_defaults(&[], &["flyway clean".to_owned()]);
        let argv = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert!(
            guard
                .check_command(&argv("php artisan migrate:fresh --force"))
                .is_some()
        );
        assert!(guard.check_command(&argv("flyway clean")).is_some());
        assert_eq!(
            guard.check_command(&argv("php artisan migrate --force")),
            None
        );
        assert!(validate_sql_pattern("... CASCADE").is_err());
        assert!(validate_sql_pattern("  ").is_err());
    }
}

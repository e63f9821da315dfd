//! Options shared by the subcommands that classify statements.

use diesel_rwsplit::classify::{Classifier, ClassifierBuilder, Dialect};
use diesel_rwsplit::Target;

/// The SQL dialect to classify in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DialectArg {
    /// PostgreSQL.
    Postgres,
    /// MySQL / MariaDB.
    Mysql,
}

impl DialectArg {
    pub(crate) fn dialect(self) -> Dialect {
        match self {
            DialectArg::Postgres => Dialect::Postgres,
            DialectArg::Mysql => Dialect::Mysql,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DialectArg::Postgres => "postgres",
            DialectArg::Mysql => "mysql",
        }
    }
}

/// Parse `--rule REGEX=primary|replica`, splitting on the last `=`.
pub(crate) fn parse_rule(value: &str) -> Result<(String, Target), String> {
    let (pattern, target) = value
        .rsplit_once('=')
        .ok_or_else(|| format!("expected REGEX=primary|replica, got {value:?}"))?;
    let target = match target {
        "primary" => Target::Primary,
        "replica" => Target::Replica,
        other => {
            return Err(format!(
                "target must be `primary` or `replica`, not {other:?}"
            ))
        }
    };
    Ok((pattern.to_owned(), target))
}

/// A classifier builder with the user's declared functions and rules.
pub(crate) fn classifier_builder(
    dialect: DialectArg,
    write_functions: &[String],
    read_only_functions: &[String],
    rules: &[(String, Target)],
) -> ClassifierBuilder {
    let mut builder = Classifier::builder(dialect.dialect());
    for name in write_functions {
        builder = builder.write_function(name);
    }
    for name in read_only_functions {
        builder = builder.read_only_function(name);
    }
    for (pattern, target) in rules {
        builder = builder.rule(pattern, *target);
    }
    builder
}

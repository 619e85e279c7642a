//! The store's database: one trait, [`Database`], with two implementations, SQLite
//! (`sqlite.rs`, the embedded default) and PostgreSQL (`postgres.rs`). The store's logic (every
//! query, compare-and-set and report) is written once, over this trait, in the SQL the two
//! share; what differs lives here ([`Dialect`]) or in the implementations: how a statement is
//! prepared and its arguments bound, how a transaction begins, and how a commit becomes durable.
//!
//! Arguments are [`Value`]s and rows are [`Row`]s of [`Cell`]s: integers (booleans are 0 and 1,
//! as SQLite keeps them), text and NULL, the only types the schema uses. Parameters are written
//! `?1`, `?2`, ... (PostgreSQL's `$1` is derived from them).

use super::{Result, StoreError};

/// One argument of a statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
}

impl From<i64> for Value<'_> {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<i32> for Value<'_> {
    fn from(value: i32) -> Self {
        Self::Int(value.into())
    }
}

impl From<u32> for Value<'_> {
    fn from(value: u32) -> Self {
        Self::Int(value.into())
    }
}

/// Saturating: a start time or a report number beyond `i64::MAX` is stored as it.
impl From<u64> for Value<'_> {
    fn from(value: u64) -> Self {
        Self::Int(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Value<'_> {
    fn from(value: bool) -> Self {
        Self::Int(value.into())
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(value: &'a str) -> Self {
        Self::Text(value)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(value: &'a String) -> Self {
        Self::Text(value)
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::Null, Into::into)
    }
}

/// The arguments of a statement: `args![id.as_str(), task, now]`.
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        &[$($crate::store::db::Value::from($arg)),*][..]
    };
}
pub(crate) use args;

/// One column of a row read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Null,
    Int(i64),
    Text(String),
}

/// One row read; [`Row::get`] takes its columns by index.
#[derive(Clone, Debug)]
pub struct Row(pub(super) Vec<Cell>);

impl Row {
    /// Column `index` as a `T`; [`StoreError::Column`] when it holds another type.
    pub fn get<T: FromCell>(&self, index: usize) -> Result<T> {
        let cell = self.0.get(index).unwrap_or(&Cell::Null);
        T::from_cell(cell).ok_or(StoreError::Column {
            index,
            wanted: std::any::type_name::<T>(),
            found: format!("{cell:?}"),
        })
    }
}

/// What a column can be read as.
pub trait FromCell: Sized {
    fn from_cell(cell: &Cell) -> Option<Self>;
}

impl FromCell for i64 {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Int(value) => Some(*value),
            _ => None,
        }
    }
}

impl FromCell for i32 {
    fn from_cell(cell: &Cell) -> Option<Self> {
        i64::from_cell(cell).and_then(|v| v.try_into().ok())
    }
}

impl FromCell for u32 {
    fn from_cell(cell: &Cell) -> Option<Self> {
        i64::from_cell(cell).and_then(|v| v.try_into().ok())
    }
}

/// A negative value (none is stored) reads as 0.
impl FromCell for u64 {
    fn from_cell(cell: &Cell) -> Option<Self> {
        i64::from_cell(cell).map(|v| v.try_into().unwrap_or(0))
    }
}

impl FromCell for bool {
    fn from_cell(cell: &Cell) -> Option<Self> {
        i64::from_cell(cell).map(|v| v != 0)
    }
}

impl FromCell for String {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Text(text) => Some(text.clone()),
            _ => None,
        }
    }
}

impl<T: FromCell> FromCell for Option<T> {
    fn from_cell(cell: &Cell) -> Option<Self> {
        match cell {
            Cell::Null => Some(None),
            other => T::from_cell(other).map(Some),
        }
    }
}

/// The SQL the two databases spell differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// `column` matches the pattern bound as `param` ([`Dialect::name_pattern`]).
    #[must_use]
    pub fn name_matches(self, column: &str, param: &str) -> String {
        match self {
            Self::Sqlite => format!("{column} GLOB {param}"),
            Self::Postgres => format!("{column} LIKE {param}"),
        }
    }

    /// A name glob of `ls --name` (`*` and `?` only; every other character is itself) in the
    /// syntax of [`Dialect::name_matches`].
    #[must_use]
    pub fn name_pattern(self, glob: &str) -> String {
        match self {
            // A `[` is a literal, which GLOB spells `[[]`.
            Self::Sqlite => glob.replace('[', "[[]"),
            Self::Postgres => glob
                .chars()
                .fold(String::with_capacity(glob.len()), |mut out, c| {
                    match c {
                        '*' => out.push('%'),
                        '?' => out.push('_'),
                        '%' | '_' | '\\' => {
                            out.push('\\');
                            out.push(c);
                        }
                        c => out.push(c),
                    }
                    out
                }),
        }
    }
}

/// One connection to the store's database. The store holds it behind a lock: calls never
/// overlap. Every write runs inside a transaction that [`Database::begin`] opened.
pub trait Database: Send {
    /// Runs one statement; returns how many rows it changed.
    fn execute(&self, sql: &str, args: &[Value<'_>]) -> Result<usize>;

    /// Runs one statement; returns its rows.
    fn query(&self, sql: &str, args: &[Value<'_>]) -> Result<Vec<Row>>;

    /// Runs statements without arguments (a savepoint, a schema).
    fn batch(&self, sql: &str) -> Result<()>;

    /// Opens a write transaction: holding the write lock before its first read, so that a
    /// check and its change can never be split by another writer.
    fn begin(&self) -> Result<()>;

    /// Commits the open transaction; when `durable` (and durability is on), it is on disk
    /// when this returns.
    fn commit(&self, durable: bool) -> Result<()>;

    /// Rolls the open transaction back, if one is open.
    fn rollback(&self);

    /// Whether a transaction is open: false after a commit, a rollback, or an error that took
    /// the transaction with it (SQLite does that on a full disk).
    fn in_transaction(&self) -> bool;

    /// Gives the space of deleted rows back (after a prune); with `full`, rewrites it whole.
    /// Outside any transaction.
    fn reclaim(&self, full: bool) -> Result<()>;

    /// After a full disk: gives back what the database can (SQLite's WAL). Outside any
    /// transaction.
    fn after_disk_full(&self) {}

    /// How many bytes the store takes where it lives (its files; its tables and indexes).
    fn size_bytes(&self) -> Result<u64>;

    /// Durable commits flushed so far.
    fn syncs(&self) -> u64;

    fn dialect(&self) -> Dialect;

    /// Runs one statement that returns at most one row.
    fn query_opt(&self, sql: &str, args: &[Value<'_>]) -> Result<Option<Row>> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// Runs one statement that returns exactly one row; [`StoreError::NoRow`] when it
    /// returns none.
    fn query_one(&self, sql: &str, args: &[Value<'_>]) -> Result<Row> {
        self.query_opt(sql, args)?
            .ok_or_else(|| StoreError::NoRow(first_words(sql)))
    }
}

/// The start of a statement, to name it in an error.
fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(6).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_glob_becomes_a_like_pattern_with_its_specials_escaped() {
        let like = Dialect::Postgres.name_pattern("a?_b*%\\[");
        assert_eq!(like, "a_\\_b%\\%\\\\[");
        assert_eq!(Dialect::Sqlite.name_pattern("b[1]*"), "b[[]1]*");
    }

    #[test]
    fn cells_read_as_their_types_and_refuse_others() {
        let row = Row(vec![Cell::Int(7), Cell::Null, Cell::Text("x".into())]);
        assert_eq!(row.get::<u32>(0).ok(), Some(7));
        assert_eq!(row.get::<bool>(0).ok(), Some(true));
        assert_eq!(row.get::<Option<i64>>(1).ok(), Some(None));
        assert_eq!(row.get::<String>(2).ok().as_deref(), Some("x"));
        assert!(row.get::<i64>(2).is_err());
        assert!(row.get::<String>(1).is_err());
    }
}

"""The reinforcement ledger: schema, writer and reader of the Parquet tables of a run."""

from rledger.ledger.reader import Ledger, LedgerError
from rledger.ledger.runs import Ledgers
from rledger.ledger.schema import COLUMNS, SCHEMA_VERSION, TABLES, Column, columns
from rledger.ledger.writer import LedgerExistsError, LedgerWriter

__all__ = [
    "COLUMNS",
    "SCHEMA_VERSION",
    "TABLES",
    "Column",
    "Ledger",
    "LedgerError",
    "LedgerExistsError",
    "Ledgers",
    "LedgerWriter",
    "columns",
]

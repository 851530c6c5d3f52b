"""A small suite of JSON Schemas for grammar-constrained decoding, in the style of
JSONSchemaBench (Geng et al., "Generating Structured Outputs from Language Models:
Benchmark and Studies", arXiv:2501.10868): flat records, enums, bounded arrays, nesting,
booleans/nulls and anyOf, all inside the subset `decoders.json_schema` compiles.

    for name, task in SUITE.items():
        rule, params = grammar.compile_schema(task.schema, tokenizer)
        ... generate from task.prompt under the rule, then grammar.validate(text, task.schema)
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SchemaTask:
    """description: one line; schema: the JSON Schema (a dict); prompt: a user message
    asking for such a JSON object."""

    description: str
    schema: dict
    prompt: str


def _obj(properties: dict, required=None) -> dict:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required,
            "additionalProperties": False}


_STR = {"type": "string"}
_ADDRESS = _obj({"street": {"type": "string", "maxLength": 40},
                 "city": {"type": "string", "maxLength": 30},
                 "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})

SUITE: dict[str, SchemaTask] = {
    "person": SchemaTask(
        "a person record: name, bounded integer age, optional email",
        _obj({"name": {"type": "string", "minLength": 1, "maxLength": 40},
              "age": {"type": "integer", "minimum": 0, "maximum": 130},
              "email": {"type": "string", "pattern": "^[a-z0-9.]+@[a-z0-9]+\\.[a-z]{2,4}$"}},
             required=["name", "age"]),
        "Describe a fictional person as a JSON object with keys name, age and email."),
    "product": SchemaTask(
        "a product with an enum category, a price and a stock flag",
        _obj({"id": {"type": "integer", "minimum": 1},
              "name": _STR,
              "category": {"enum": ["books", "electronics", "garden", "toys"]},
              "price": {"type": "number"},
              "in_stock": {"type": "boolean"}}),
        "Give a JSON object for a product in an online shop: id, name, category (books, "
        "electronics, garden or toys), price and in_stock."),
    "scores": SchemaTask(
        "a list of 3 to 6 integers between 0 and 100",
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100},
         "minItems": 3, "maxItems": 6},
        "Write a JSON array of between 3 and 6 test scores out of 100."),
    "address": SchemaTask(
        "a customer with a nested address object (zip: 5 digits)",
        _obj({"name": _STR, "address": _ADDRESS}),
        "Return a JSON object for a customer with a name and an address (street, city, "
        "5-digit zip)."),
    "flags": SchemaTask(
        "booleans and a nullable note",
        _obj({"active": {"type": "boolean"}, "verified": {"type": "boolean"},
              "note": {"type": ["string", "null"], "maxLength": 30}}),
        "Output a JSON object with boolean fields active and verified, and a note that may "
        "be null."),
    "event": SchemaTask(
        "an event with a date-formatted day and an optional list of attendees",
        _obj({"title": {"type": "string", "maxLength": 50},
              "date": {"type": "string", "format": "date"},
              "attendees": {"type": "array", "items": {"type": "string", "maxLength": 20},
                            "maxItems": 5}},
             required=["title", "date"]),
        "Describe a meeting as JSON with a title, a date (YYYY-MM-DD) and attendees."),
    "measurement": SchemaTask(
        "a sensor reading whose value is a number or null (anyOf)",
        _obj({"sensor": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
              "value": {"anyOf": [{"type": "number"}, {"type": "null"}]},
              "unit": {"enum": ["C", "F", "K"]}}),
        "Give a JSON temperature reading with sensor id (like AB-123), value and unit."),
    "order": SchemaTask(
        "an order with an array of line-item objects",
        _obj({"order_id": {"type": "integer", "minimum": 1000, "maximum": 9999},
              "items": {"type": "array", "minItems": 1, "maxItems": 4,
                        "items": _obj({"sku": {"type": "string", "maxLength": 12},
                                       "quantity": {"type": "integer", "minimum": 1,
                                                    "maximum": 99}})},
              "express": {"type": "boolean"}}),
        "Write a JSON order with a 4-digit order_id, 1 to 4 items (sku, quantity) and an "
        "express flag."),
    "status": SchemaTask(
        "a const version tag and a status enum",
        _obj({"version": {"const": "v1"},
              "status": {"enum": ["ok", "degraded", "down"]},
              "code": {"type": "integer", "minimum": 100, "maximum": 599}}),
        "Return a JSON health check: version v1, status (ok, degraded or down) and an HTTP "
        "code."),
    "contact": SchemaTask(
        "a contact that is either a phone or an email object (anyOf of objects)",
        {"anyOf": [_obj({"phone": {"type": "string", "pattern": "^\\+?[0-9]{7,12}$"}}),
                   _obj({"email": {"type": "string", "maxLength": 40}})]},
        "Give one way to contact a company as JSON: either {\"phone\": ...} or "
        "{\"email\": ...}."),
    "matrix": SchemaTask(
        "a 2-3 by 2-3 matrix of small integers (nested arrays)",
        {"type": "array", "minItems": 2, "maxItems": 3,
         "items": {"type": "array", "minItems": 2, "maxItems": 3,
                   "items": {"type": "integer", "minimum": -9, "maximum": 9}}},
        "Write a small matrix of single-digit integers as a JSON array of rows."),
    "book": SchemaTask(
        "a book with optional fields, tags and a rating",
        _obj({"title": {"type": "string", "maxLength": 60},
              "author": {"type": "string", "maxLength": 40},
              "year": {"type": "integer", "minimum": 1450, "maximum": 2030},
              "tags": {"type": "array", "items": {"type": "string", "maxLength": 15},
                       "maxItems": 4},
              "rating": {"type": "number"}},
             required=["title", "author"]),
        "Describe your favourite book as a JSON object (title, author, year, tags, rating)."),
}

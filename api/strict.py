"""Strict request parsing: JSON bodies decoded by their own types, and ids that are digits.

Litestar converts request data with msgspec's lax mode (`"5"` becomes 5, `12345` a
datetime, any content type is read as JSON) and parses `{id:int}` path segments with
Python's int() (`" 1"`, `"+1"`, `"1_0"` and other scripts' digits are ids). Here a body is
decoded from its bytes, as application/json only, by a strict msgspec decoder for the
handler's body type; a JSON nesting too deep to decode is a 400, not a RecursionError; and a
job id is ASCII digits without a leading zero, 1..MAX_ID.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, TypeVar

import msgspec
from litestar import Request
from litestar.dto import AbstractDTO
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi.spec import OpenAPIType
from litestar.params import Parameter
from litestar.typing import FieldDefinition

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.dto._backend import DTOBackend
    from litestar.dto.data_structures import DTOFieldDefinition
    from litestar.openapi.spec import Reference, Schema

from api.schemas import MAX_BIGINT as MAX_ID

T = TypeVar("T")

JSON_MEDIA_TYPE = "application/json"
_AT = re.compile(r"^(?P<why>.*) - at `\$\.?(?P<path>[^`]*)`$", re.DOTALL)


class StrictJSON(AbstractDTO[T], Generic[T]):
    """Decodes a handler's `data` from the raw body with msgspec in strict mode.

    Use as `dto=StrictJSON[Model], return_dto=None`; the OpenAPI schema is Model's own.
    Raises 415 for a body that is not application/json and 400 for one that does not
    decode as Model.
    """

    _decoders: ClassVar[dict[Any, msgspec.json.Decoder[Any]]] = {}

    @classmethod
    def generate_field_definitions(
        cls, model_type: type[Any]
    ) -> Generator[DTOFieldDefinition, None, None]:
        yield from ()

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        return False

    @classmethod
    def create_for_field_definition(
        cls,
        field_definition: FieldDefinition,
        handler_id: str,
        backend_cls: type[DTOBackend] | None = None,
    ) -> None:
        """No transfer models: the body is decoded straight into the model type."""

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: SchemaCreator
    ) -> Reference | Schema:
        return schema_creator.for_field_definition(FieldDefinition.from_annotation(cls.model_type))

    def decode_bytes(self, value: bytes) -> Any:
        media_type = self.asgi_connection.headers.get("content-type", "").split(";")[0]
        if media_type.strip().lower() != JSON_MEDIA_TYPE:
            raise HTTPException(
                status_code=415, detail=f"the request body must be {JSON_MEDIA_TYPE}"
            )
        decoder = self._decoders.get(self.model_type)
        if decoder is None:
            decoder = self._decoders[self.model_type] = msgspec.json.Decoder(self.model_type)
        try:
            return decoder.decode(value)
        except msgspec.ValidationError as exc:
            raise _invalid(str(exc)) from None
        except msgspec.DecodeError as exc:
            raise ValidationException(f"the request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ValidationException("the request body nests too deeply to decode") from None

    def decode_builtins(self, value: dict[str, Any]) -> Any:
        try:
            return msgspec.convert(value, self.model_type)
        except msgspec.ValidationError as exc:
            raise _invalid(str(exc)) from None


def _invalid(message: str) -> ValidationException:
    found = _AT.match(message)
    if found is None or not found["path"]:
        return ValidationException(f"invalid request body: {message}")
    where = found["path"]
    return ValidationException(
        f"invalid request body: {where}: {found['why']}",
        extra=[{"message": found["why"], "key": where, "source": "body"}],
    )


class JobIdValue(int):
    """A job id from a path segment; decoded only by `decode_job_id`."""


def _is_number(segment: object) -> bool:
    return isinstance(segment, str) and segment.isascii() and segment.isdigit()


async def job_id_is_a_number(request: Request[Any, Any, Any]) -> None:
    """A before_request hook: a `job_id` segment that is not a decimal number names no job
    (404, as for a route that does not exist). It runs before parameters are parsed, where
    any error is a 400."""
    segment = request.path_params.get("job_id")
    if segment is not None and not _is_number(segment):
        raise NotFoundException("no such job: a job id is a decimal number")


def decode_job_id(_: type[Any], value: Any) -> JobIdValue:
    """A path segment as a job id: ASCII digits without a leading zero, 1..MAX_ID.
    Raises ValueError (400) otherwise."""
    # The length test first: int() of a long digit string costs quadratic time.
    if not (_is_number(value) and value[0] != "0" and len(value) <= len(str(MAX_ID))):
        raise ValueError(f"a job id is from 1 to {MAX_ID}, without leading zeros")
    job_id = JobIdValue(value)
    if job_id > MAX_ID:
        raise ValueError(f"a job id is from 1 to {MAX_ID}, without leading zeros")
    return job_id


# Path ids are declared `{job_id:str}` and typed JobId, so they reach decode_job_id as text;
# controllers with such paths set `before_request = job_id_is_a_number`.
JobId = Annotated[
    JobIdValue,
    Parameter(
        description="Job id.",
        schema_extra={"type": OpenAPIType.INTEGER, "minimum": 1, "maximum": MAX_ID},
    ),
]
TYPE_DECODERS = [(lambda t: t is JobIdValue, decode_job_id)]

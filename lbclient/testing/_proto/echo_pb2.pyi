from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class EchoRequest(_message.Message):
    __slots__ = ("message", "count", "sleep_ms", "fail_code", "fail_details", "payload")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SLEEP_MS_FIELD_NUMBER: _ClassVar[int]
    FAIL_CODE_FIELD_NUMBER: _ClassVar[int]
    FAIL_DETAILS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    message: str
    count: int
    sleep_ms: int
    fail_code: int
    fail_details: str
    payload: bytes
    def __init__(self, message: _Optional[str] = ..., count: _Optional[int] = ..., sleep_ms: _Optional[int] = ..., fail_code: _Optional[int] = ..., fail_details: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class EchoReply(_message.Message):
    __slots__ = ("message", "backend", "address", "index", "payload")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    message: str
    backend: str
    address: str
    index: int
    payload: bytes
    def __init__(self, message: _Optional[str] = ..., backend: _Optional[str] = ..., address: _Optional[str] = ..., index: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

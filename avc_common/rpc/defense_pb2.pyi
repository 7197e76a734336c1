from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("height", "width", "channels", "num_classes", "class_names", "max_images_per_request", "query_budget_total", "query_budget_remaining", "seconds_per_image", "queued_images", "caller")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    QUERY_BUDGET_TOTAL_FIELD_NUMBER: _ClassVar[int]
    QUERY_BUDGET_REMAINING_FIELD_NUMBER: _ClassVar[int]
    SECONDS_PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    num_classes: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    max_images_per_request: int
    query_budget_total: int
    query_budget_remaining: int
    seconds_per_image: float
    queued_images: int
    caller: str
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., num_classes: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., max_images_per_request: _Optional[int] = ..., query_budget_total: _Optional[int] = ..., query_budget_remaining: _Optional[int] = ..., seconds_per_image: _Optional[float] = ..., queued_images: _Optional[int] = ..., caller: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, labels: _Optional[_Iterable[int]] = ...) -> None: ...

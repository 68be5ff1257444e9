"""Step 2: image files -> pixels on the device.

decoding     one image file -> a uint8 array (PNG 8/16-bit, JPEG, DICOM, CIFAR members), crop / resize
imagecache   the memory-mapped uint8 cache of a dataset: resumable locked build, quarantine, per-slot checksums
prefetch     background gathering of the next batches from the cache
loaders      `Split` (cache rows + targets), on-device augmentation, samplers, step / eval loaders
"""

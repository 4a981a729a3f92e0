/* stb_image, stb_image_resize and stb_image_write compiled into the fuzz
 * harnesses (instead of Debian's libstb), so that the sanitizers and the
 * coverage instrumentation see inside the decoders too. */
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>
